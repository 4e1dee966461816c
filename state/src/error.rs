//! The storage error, a leaf every module of this crate may name (the codec decodes records
//! into it; the store and the state-root code return it).

use std::path::PathBuf;

use rtchain_exec::StateError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<StoreError> for StateError {
    fn from(e: StoreError) -> Self {
        StateError(e.to_string())
    }
}
