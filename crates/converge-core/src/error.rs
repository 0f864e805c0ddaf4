//! Errors of the algebra. Each kind maps to one PostgreSQL SQLSTATE in the
//! extension, so callers never have to parse messages.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed text input (22P02 invalid_text_representation).
    InvalidText,
    /// Malformed, truncated or non-canonical binary input (22P03).
    InvalidBinary,
    /// An argument that can never be valid, e.g. a negative increment (22023).
    InvalidParameter,
    /// A result that does not fit in bigint (22003).
    OutOfRange,
    /// A bcounter spend beyond this node's rights (55000).
    InsufficientRights,
    /// An ormap mutator of one nested type used on a key of another (42804).
    WrongType,
    /// A value over the size limit (54000).
    TooLarge,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into() }
    }
    pub fn text(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidText, message)
    }
    pub fn binary(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidBinary, message)
    }
    pub fn param(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParameter, message)
    }
    pub fn range(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::OutOfRange, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
