//! The worker library's one error type: what `build` and `run_until`
//! return. Lost connections are not errors here: the worker reconnects.

use tonic::Code;

/// Why a worker cannot start or had to give up.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The builder's settings cannot work (no handler, a bad address, a
    /// token a header cannot carry...); nothing was sent.
    #[error("worker configuration: {0}")]
    Config(String),
    /// The server refused the worker with a status that no reconnect can
    /// fix (`INVALID_ARGUMENT`, `UNAUTHENTICATED`, `PERMISSION_DENIED`):
    /// a kind the server does not hand out, a wrong token, a missing role.
    #[error("the server refused the worker: {code:?}: {message}")]
    Refused {
        /// The status code the stream ended with.
        code: Code,
        /// The server's message, which names the field for
        /// `INVALID_ARGUMENT`.
        message: String,
    },
}

impl WorkerError {
    /// The status code, for `Refused`.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Config(_) => None,
            Self::Refused { code, .. } => Some(*code),
        }
    }
}
