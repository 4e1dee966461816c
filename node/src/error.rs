//! The node's error: what stops it from starting or running (bad config, storage, a diverged
//! chain). Input from users and peers never becomes one: it is a typed rejection (`outcome`).

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] rtchain_state::StoreError),
    #[error(transparent)]
    MiniLog(#[from] rtchain_state::MiniLogError),
    #[error(transparent)]
    Genesis(#[from] rtchain_state::GenesisError),
    #[error("state: {0}")]
    State(#[from] rtchain_exec::StateError),
    #[error("recovery: {0}")]
    Recovery(String),
    /// This node's execution differs from what the chain (its validators, or L1) says.
    #[error("diverged: {0}")]
    Diverged(String),
    #[error("rpc: {0}")]
    Rpc(String),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}
