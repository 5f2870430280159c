//! What can go wrong, and the exit code each case gives.

use redstone::client::ClientError;

/// A failed command: one line on stderr and an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The key (or a checkpoint's tensor or manifest) is not cached: 1.
    #[error("not found: {0}")]
    NotFound(String),
    /// The server refused the request (already exists, out of memory,
    /// invalid): 1.
    #[error("{0}")]
    Refused(String),
    /// The output file could not be written: 1.
    #[error("{0}")]
    Output(String),
    /// Bad arguments or an unusable input file: 2.
    #[error("{0}")]
    Usage(String),
    /// No server (or not enough of a cluster) answered: 3.
    #[error("server unreachable: {0}")]
    Unreachable(String),
}

impl CliError {
    /// The process exit code: 0 ok, 1 not found, refused or not written,
    /// 2 usage, 3 server unreachable.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::NotFound(_) | CliError::Refused(_) | CliError::Output(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unreachable(_) => 3,
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        match e {
            ClientError::Connect { .. }
            | ClientError::Unavailable(_)
            | ClientError::Timeout(_)
            | ClientError::Quorum(_) => CliError::Unreachable(e.to_string()),
            other => CliError::Refused(other.to_string()),
        }
    }
}
