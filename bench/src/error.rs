//! Errors that stop a benchmark before or around its timed phase.
//!
//! Failures of single transactions during the timed phase are not errors of the run: they are
//! counted in the result's `errors` and the first one is reported in `first_error`.

use std::path::PathBuf;

use jsonrpsee::core::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),

    #[error("cannot build a JSON-RPC client for {target}: {source}")]
    Client { target: String, source: ClientError },

    #[error("{method} on {target} failed: {source}")]
    Rpc {
        target: String,
        method: &'static str,
        source: ClientError,
    },

    #[error("{target}: setup failed: {reason}")]
    Setup { target: String, reason: String },

    #[error("signing a transaction failed: {0}")]
    Sign(#[from] alloy_signer::Error),

    #[error("contract artifact {}: {reason}", path.display())]
    Artifact { path: PathBuf, reason: String },

    #[error(
        "anvil not found at {}; run `scripts/setup.sh` (or `npm ci` in the repository root) to \
         install it, or pass --anvil-bin PATH",
        path.display()
    )]
    AnvilMissing { path: PathBuf },

    #[error("anvil: {0}")]
    Anvil(String),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Setting up an in-process node, a veth rig or a client socket failed.
    #[error("setup: {0}")]
    Local(String),

    #[error("the benchmark's {0} task failed: {1}")]
    Task(&'static str, String),
}
