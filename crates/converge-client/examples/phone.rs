//! A phone that edits an incident offline and syncs later.
//!
//!     CONVERGE_DSN='host=127.0.0.1 port=5432 user=postgres dbname=app' \
//!         cargo run -p converge-client --example phone
//!
//! The database needs the converge extension; the example creates (if
//! missing) a replicated table `phone_incident` to work on.

use converge_client::{AnyCrdt, Client};
use converge_core::Json;
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dsn = std::env::var("CONVERGE_DSN").map_err(|_| "set CONVERGE_DSN to a libpq conninfo")?;
    let dir = std::env::temp_dir().join("converge-phone-example");
    let mut phone = Client::open(&dir, "phone-ana")?;
    phone.declare("phone_incident", "checklist", "orset")?;
    phone.declare("phone_incident", "visits", "gcounter")?;
    phone.declare("phone_incident", "title", "mvreg")?;

    // In the basement, no signal: three edits go to the durable outbox.
    let key = json!({ "id": 1 });
    phone.mutate("phone_incident", key.clone(), "checklist", |v, ctx| match v {
        AnyCrdt::OrSet(s) => Ok(AnyCrdt::OrSet(s.add("photo of the pump", ctx.dot.clone()))),
        _ => unreachable!(),
    })?;
    phone.mutate("phone_incident", key.clone(), "visits", |v, ctx| match v {
        AnyCrdt::GCounter(c) => Ok(AnyCrdt::GCounter(c.incr(ctx.actor, 1)?)),
        _ => unreachable!(),
    })?;
    phone.mutate("phone_incident", key.clone(), "title", |v, ctx| match v {
        AnyCrdt::MvReg(r) => Ok(AnyCrdt::MvReg(r.assign(Json::parse("\"Pump leaking, bay 4\"")?, ctx.dot.clone()))),
        _ => unreachable!(),
    })?;
    println!("offline: {} ops waiting in {}", phone.outbox().len(), dir.display());

    // Back upstairs: push the outbox, pull what others did.
    let mut db = postgres::Client::connect(&dsn, postgres::NoTls)?;
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS phone_incident (id int PRIMARY KEY, checklist converge.orset,
                                                    visits converge.gcounter, title converge.mvreg);
         SELECT converge.replicate('phone_incident');",
    )?;
    for o in phone.push(&mut db)? {
        println!("pushed {:<14} {}{}", o.op_id, o.outcome, o.reason.map(|r| format!(" ({r})")).unwrap_or_default());
    }
    let pulled = phone.pull(&mut db)?;
    println!("pulled {pulled} ops; frontier {:?}", phone.frontier());
    for (cell, value) in phone.cells() {
        println!("{} {} {}: {}", cell.table, cell.key, cell.column, value.to_text());
    }
    Ok(())
}
