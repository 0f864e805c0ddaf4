//! A CRDT value of any of the ten types, chosen by the column's type name.

use converge_core::*;

#[derive(Clone, Debug, PartialEq)]
pub enum AnyCrdt {
    GCounter(GCounter),
    PnCounter(PnCounter),
    BCounter(BCounter),
    GSet(GSet),
    OrSet(OrSet),
    LwwReg(LwwReg),
    MvReg(MvReg),
    LwwMap(LwwMap),
    OrMap(OrMap),
    SeqText(SeqText),
}

macro_rules! each {
    ($v:expr, $x:ident => $body:expr) => {
        match $v {
            AnyCrdt::GCounter($x) => $body,
            AnyCrdt::PnCounter($x) => $body,
            AnyCrdt::BCounter($x) => $body,
            AnyCrdt::GSet($x) => $body,
            AnyCrdt::OrSet($x) => $body,
            AnyCrdt::LwwReg($x) => $body,
            AnyCrdt::MvReg($x) => $body,
            AnyCrdt::LwwMap($x) => $body,
            AnyCrdt::OrMap($x) => $body,
            AnyCrdt::SeqText($x) => $body,
        }
    };
}

/// `$e` (a generic call that returns `Result<T>`) evaluated for the type of
/// `$v`'s variant and wrapped in that variant.
macro_rules! same_variant {
    ($v:expr, $e:expr) => {
        match $v {
            AnyCrdt::GCounter(_) => AnyCrdt::GCounter($e?),
            AnyCrdt::PnCounter(_) => AnyCrdt::PnCounter($e?),
            AnyCrdt::BCounter(_) => AnyCrdt::BCounter($e?),
            AnyCrdt::GSet(_) => AnyCrdt::GSet($e?),
            AnyCrdt::OrSet(_) => AnyCrdt::OrSet($e?),
            AnyCrdt::LwwReg(_) => AnyCrdt::LwwReg($e?),
            AnyCrdt::MvReg(_) => AnyCrdt::MvReg($e?),
            AnyCrdt::LwwMap(_) => AnyCrdt::LwwMap($e?),
            AnyCrdt::OrMap(_) => AnyCrdt::OrMap($e?),
            AnyCrdt::SeqText(_) => AnyCrdt::SeqText($e?),
        }
    };
}

impl AnyCrdt {
    /// The empty value of the SQL type `type_name`.
    pub fn empty(type_name: &str) -> Result<AnyCrdt> {
        Ok(match type_name {
            "gcounter" => AnyCrdt::GCounter(Default::default()),
            "pncounter" => AnyCrdt::PnCounter(Default::default()),
            "bcounter" => AnyCrdt::BCounter(Default::default()),
            "gset" => AnyCrdt::GSet(Default::default()),
            "orset" => AnyCrdt::OrSet(Default::default()),
            "lwwreg" => AnyCrdt::LwwReg(Default::default()),
            "mvreg" => AnyCrdt::MvReg(Default::default()),
            "lwwmap" => AnyCrdt::LwwMap(Default::default()),
            "ormap" => AnyCrdt::OrMap(Default::default()),
            "seqtext" => AnyCrdt::SeqText(Default::default()),
            other => return Err(Error::param(format!("unknown converge type \"{other}\""))),
        })
    }

    pub fn type_name(&self) -> &'static str {
        fn name<T: Crdt>(_: &T) -> &'static str {
            T::NAME
        }
        each!(self, x => name(x))
    }

    pub fn encode(&self) -> Vec<u8> {
        each!(self, x => encode(x))
    }

    pub fn to_text(&self) -> String {
        each!(self, x => to_text(x))
    }

    /// Decode `bytes` as a value of the same type as `self`.
    pub fn decode_like(&self, bytes: &[u8]) -> Result<AnyCrdt> {
        Ok(same_variant!(self, decode(bytes)))
    }

    /// Parse the full-state text form as a value of the same type as `self`.
    pub fn parse_like(&self, text: &str) -> Result<AnyCrdt> {
        Ok(same_variant!(self, from_text(text)))
    }

    /// Merge a delta or state in binary form into this value.
    pub fn merge_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let other = self.decode_like(bytes)?;
        self.merge(&other)
    }

    pub fn merge(&mut self, other: &AnyCrdt) -> Result<()> {
        match (self, other) {
            (AnyCrdt::GCounter(a), AnyCrdt::GCounter(b)) => a.merge(b),
            (AnyCrdt::PnCounter(a), AnyCrdt::PnCounter(b)) => a.merge(b),
            (AnyCrdt::BCounter(a), AnyCrdt::BCounter(b)) => a.merge(b),
            (AnyCrdt::GSet(a), AnyCrdt::GSet(b)) => a.merge(b),
            (AnyCrdt::OrSet(a), AnyCrdt::OrSet(b)) => a.merge(b),
            (AnyCrdt::LwwReg(a), AnyCrdt::LwwReg(b)) => a.merge(b),
            (AnyCrdt::MvReg(a), AnyCrdt::MvReg(b)) => a.merge(b),
            (AnyCrdt::LwwMap(a), AnyCrdt::LwwMap(b)) => a.merge(b),
            (AnyCrdt::OrMap(a), AnyCrdt::OrMap(b)) => a.merge(b),
            (AnyCrdt::SeqText(a), AnyCrdt::SeqText(b)) => a.merge(b),
            (a, b) => {
                return Err(Error::new(
                    ErrorKind::WrongType,
                    format!("cannot merge a {} into a {}", b.type_name(), a.type_name()),
                ))
            }
        }
        Ok(())
    }

    /// Of a counter (gcounter, pncounter, bcounter), only `actor`'s own
    /// totals: its counts, and for a bcounter the rights it moved away.
    /// None when it has none, and for the other types, whose own parts
    /// are no running totals.
    pub fn own_counts(&self, actor: &str) -> Option<AnyCrdt> {
        let one = |c: &counts::Counts| counts::Counts::single(actor, c.get(actor));
        let own = match self {
            AnyCrdt::GCounter(x) => AnyCrdt::GCounter(GCounter { counts: one(&x.counts) }),
            AnyCrdt::PnCounter(x) => AnyCrdt::PnCounter(PnCounter { p: one(&x.p), n: one(&x.n) }),
            AnyCrdt::BCounter(x) => AnyCrdt::BCounter(BCounter {
                p: one(&x.p),
                n: one(&x.n),
                t: x.t.iter().filter(|(from, _)| from.as_str() == actor).map(|(from, to)| (from.clone(), to.clone())).collect(),
            }),
            _ => return None,
        };
        (own != AnyCrdt::empty(own.type_name()).ok()?).then_some(own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_counts_keep_only_the_actors_running_totals() {
        let mut pn = PnCounter::default();
        pn.incr("me", 5).unwrap();
        pn.decr("me", 2).unwrap();
        pn.incr("other", 7).unwrap();
        pn.decr("other", 1).unwrap();
        let Some(AnyCrdt::PnCounter(mine)) = AnyCrdt::PnCounter(pn).own_counts("me") else { panic!() };
        assert_eq!((mine.p.get("me"), mine.n.get("me"), mine.p.get("other"), mine.n.get("other")), (5, 2, 0, 0));

        let mut b = BCounter::default();
        b.incr("me", 10).unwrap();
        b.incr("other", 4).unwrap();
        b.decr("me", 3).unwrap();
        b.transfer("me", "other", 2).unwrap();
        b.transfer("other", "me", 1).unwrap();
        let Some(AnyCrdt::BCounter(mine)) = AnyCrdt::BCounter(b).own_counts("me") else { panic!() };
        assert_eq!((mine.p.get("me"), mine.n.get("me"), mine.p.get("other")), (10, 3, 0));
        assert_eq!(mine.t.len(), 1, "only the rights it moved away");
        assert_eq!(mine.t["me"].get("other"), 2);

        let mut g = GCounter::default();
        g.incr("other", 3).unwrap();
        assert_eq!(AnyCrdt::GCounter(g).own_counts("me"), None, "no count of its own: nothing");
        assert_eq!(AnyCrdt::OrSet(OrSet::default()).own_counts("me"), None);
    }
}
