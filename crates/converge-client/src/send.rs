//! Sending ops to a server: one `converge.apply_batch` per push, retried
//! whole when the server rolled it back for a deadlock or a serialization
//! failure with a concurrent batch.

use crate::{ClientError, Op, Result};

/// What a push did, per op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub op_id: String,
    pub outcome: String,
    pub reason: Option<String>,
}

/// Apply `ops` on a server with one `converge.apply_batch`; one outcome per
/// op decided (an op buffered and then applied in the same call shows twice).
/// A batch that hits a deadlock or serialization failure with a concurrent
/// batch is rolled back whole by the server and sent again here.
pub fn send_ops(db: &mut postgres::Client, ops: &[Op], origin: &str) -> Result<Vec<Outcome>> {
    let mut attempt = 0;
    loop {
        match send_once(db, ops, origin) {
            Err(ClientError::Db(e))
                if attempt < 8
                    && matches!(
                        e.code(),
                        Some(&postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
                            | Some(&postgres::error::SqlState::T_R_SERIALIZATION_FAILURE)
                    ) =>
            {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(5 << attempt));
            }
            other => return other,
        }
    }
}

fn send_once(db: &mut postgres::Client, ops: &[Op], origin: &str) -> Result<Vec<Outcome>> {
    if ops.is_empty() {
        return Ok(vec![]);
    }
    // The ops travel in their binary form (converge-core's Op::encode) and
    // the server decodes them with the same code (converge.op_decode).
    let encoded: Vec<Vec<u8>> = ops.iter().map(Op::encode).collect();
    let rows = db.query(
        "SELECT r.op_id, r.outcome, r.reason FROM converge.apply_batch(ARRAY(
             SELECT converge.op_decode(u.b) FROM unnest($1::bytea[]) WITH ORDINALITY AS u(b, n) ORDER BY u.n), $2) r",
        &[&encoded, &origin],
    )?;
    Ok(rows.iter().map(|r| Outcome { op_id: r.get(0), outcome: r.get(1), reason: r.get(2) }).collect())
}
