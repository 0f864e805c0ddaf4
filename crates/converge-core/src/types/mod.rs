//! The ten CRDT types, one module each.

pub mod bcounter;
pub mod counts;
pub mod gcounter;
pub mod gset;
pub mod lwwmap;
pub mod lwwreg;
pub mod mvreg;
pub mod ormap;
pub mod orset;
pub mod pncounter;
pub mod seqtext;

pub use bcounter::BCounter;
pub use gcounter::GCounter;
pub use gset::GSet;
pub use lwwmap::LwwMap;
pub use lwwreg::LwwReg;
pub use mvreg::MvReg;
pub use ormap::OrMap;
pub use orset::OrSet;
pub use pncounter::PnCounter;
pub use seqtext::SeqText;
