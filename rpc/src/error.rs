//! Errors: the server's start-up error, and the mapping of every failure to the JSON-RPC code
//! and message geth answers, because clients match on them: viem falls back from
//! `eth_fillTransaction` only on -32601, ethers and viem decode code 3 revert data, wallets show
//! geth's "nonce too low" text.

use std::net::SocketAddr;

use alloy_primitives::{Bytes, U256};
use jsonrpsee::types::{ErrorObject, ErrorObjectOwned};

use crate::backend::BackendError;

/// Result of an RPC handler: the error is the JSON-RPC error object sent to the client.
pub(crate) type RpcResult<T> = Result<T, ErrorObjectOwned>;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("invalid RPC config: {0}")]
    Config(String),
    #[error(
        "cannot listen for JSON-RPC on {addr}: {source} (is another node using the port? choose \
         another RPC address)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("registering RPC method: {0}")]
    Register(#[from] jsonrpsee::core::RegisterMethodError),
}

/// JSON-RPC error codes used here besides the JSON-RPC 2.0 ones jsonrpsee answers itself
/// (-32700 parse error, -32600 invalid request).
pub mod code {
    /// geth's code for a method it does not serve, and for eth_subscribe over plain HTTP.
    pub const METHOD_NOT_FOUND: i32 = -32601;
    pub const INVALID_PARAMS: i32 = -32602;
    pub const INTERNAL: i32 = -32603;
    /// geth's code for every error that has no code of its own ("nonce too low", "header not
    /// found", "out of gas", ...).
    pub const SERVER: i32 = -32000;
    /// EIP-1474 "limit exceeded": a query over a configured bound (block range, log count,
    /// filters, waiting synchronous sends).
    pub const LIMIT_EXCEEDED: i32 = -32005;
    /// geth's code for a reverted eth_call / eth_estimateGas; `data` holds the revert bytes.
    pub const EXECUTION_REVERTED: i32 = 3;
    /// EIP-7966: the transaction was accepted but no receipt came within the timeout; `data`
    /// holds the transaction hash.
    pub const SYNC_TIMEOUT: i32 = 4;
    /// EIP-7966: the transaction was accepted but could not be processed (dropped before
    /// execution); `data` holds the transaction hash.
    pub const SYNC_NOT_PROCESSED: i32 = 5;
}

pub(crate) fn invalid_params(message: impl Into<String>) -> ErrorObjectOwned {
    ErrorObject::owned(code::INVALID_PARAMS, message.into(), None::<()>)
}

pub(crate) fn server_error(message: impl Into<String>) -> ErrorObjectOwned {
    ErrorObject::owned(code::SERVER, message.into(), None::<()>)
}

pub(crate) fn limit_exceeded(message: impl Into<String>) -> ErrorObjectOwned {
    ErrorObject::owned(code::LIMIT_EXCEEDED, message.into(), None::<()>)
}

pub(crate) fn internal_error(message: impl Into<String>) -> ErrorObjectOwned {
    ErrorObject::owned(code::INTERNAL, message.into(), None::<()>)
}

/// geth's text for a method it does not serve.
pub(crate) fn method_not_found(method: &str) -> ErrorObjectOwned {
    ErrorObject::owned(
        code::METHOD_NOT_FOUND,
        format!("the method {method} does not exist/is not available"),
        None::<()>,
    )
}

/// geth's answer to eth_subscribe / eth_unsubscribe over plain HTTP.
pub(crate) fn notifications_unsupported() -> ErrorObjectOwned {
    ErrorObject::owned(
        code::METHOD_NOT_FOUND,
        "notifications not supported",
        None::<()>,
    )
}

/// geth's answer for a state read at a block it does not have.
pub(crate) fn header_not_found() -> ErrorObjectOwned {
    server_error("header not found")
}

/// Maps a backend refusal to geth's code and message.
pub(crate) fn from_backend(err: BackendError) -> ErrorObjectOwned {
    match err {
        BackendError::InvalidTransaction(message) | BackendError::PoolFull(message) => {
            server_error(message)
        }
        BackendError::AlreadyKnown
        | BackendError::HistoricalStateUnavailable(_)
        | BackendError::BlockNotFound
        | BackendError::NotFound(_)
        | BackendError::UnknownAccount
        | BackendError::Unavailable(_) => server_error(err.to_string()),
        BackendError::InvalidParams(message) => invalid_params(message),
        BackendError::LimitExceeded(message) => limit_exceeded(message),
        BackendError::Internal(_) => {
            tracing::warn!(target: "rpc", error = %err, "backend internal error");
            internal_error(err.to_string())
        }
    }
}

/// geth's error for a reverted call: code 3, "execution reverted" plus the decoded reason when
/// the revert data is an `Error(string)` or `Panic(uint256)`, and the raw revert bytes as hex in
/// `data` (always present, "0x" when the revert carried no data).
pub(crate) fn execution_reverted(output: &Bytes) -> ErrorObjectOwned {
    let message = match decode_revert_reason(output) {
        Some(reason) => format!("execution reverted: {reason}"),
        None => "execution reverted".to_owned(),
    };
    ErrorObject::owned(code::EXECUTION_REVERTED, message, Some(output.to_string()))
}

/// `Error(string)`: what `revert("...")` and `require(cond, "...")` return.
const ERROR_SELECTOR: [u8; 4] = [0x08, 0xc3, 0x79, 0xa0];
/// `Panic(uint256)`: what failed asserts, overflow, division by zero... return since 0.8.
const PANIC_SELECTOR: [u8; 4] = [0x4e, 0x48, 0x7b, 0x71];

/// Decodes revert data the way geth's `abi.UnpackRevert` does; `None` for anything else (a
/// custom error, or malformed data), which geth reports as plain "execution reverted".
pub(crate) fn decode_revert_reason(output: &[u8]) -> Option<String> {
    let (selector, body) = output.split_first_chunk::<4>()?;
    if *selector == ERROR_SELECTOR {
        // ABI: offset of the string (a word), then at that offset its length and its bytes.
        let offset = read_word_usize(body, 0)?;
        let len = read_word_usize(body, offset)?;
        let start = offset.checked_add(32)?;
        let bytes = body.get(start..start.checked_add(len)?)?;
        Some(String::from_utf8_lossy(bytes).into_owned())
    } else if *selector == PANIC_SELECTOR {
        let word = body.get(..32)?;
        let panic_code = U256::from_be_slice(word);
        let reason = match u64::try_from(panic_code) {
            Ok(0x00) => "generic panic",
            Ok(0x01) => "assert(false)",
            Ok(0x11) => "arithmetic underflow or overflow",
            Ok(0x12) => "division or modulo by zero",
            Ok(0x21) => "enum overflow",
            Ok(0x22) => "invalid encoded storage byte array accessed",
            Ok(0x31) => "out-of-bounds array access; popping on an empty array",
            Ok(0x32) => "out-of-bounds access of an array or bytesN",
            Ok(0x41) => "out of memory",
            Ok(0x51) => "uninitialized function",
            _ => return Some(format!("unknown panic code: {panic_code:#x}")),
        };
        Some(reason.to_owned())
    } else {
        None
    }
}

/// Reads the ABI word at `at` as a length or offset; `None` if it is out of range or does not
/// fit (revert data comes from contracts: never trust it to be well formed).
fn read_word_usize(data: &[u8], at: usize) -> Option<usize> {
    let word = data.get(at..at.checked_add(32)?)?;
    usize::try_from(U256::from_be_slice(word)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::hex;

    fn error_string(reason: &str) -> Vec<u8> {
        let mut out = ERROR_SELECTOR.to_vec();
        out.extend_from_slice(&U256::from(32).to_be_bytes::<32>());
        out.extend_from_slice(&U256::from(reason.len()).to_be_bytes::<32>());
        let mut padded = reason.as_bytes().to_vec();
        padded.resize(reason.len().div_ceil(32) * 32, 0);
        out.extend_from_slice(&padded);
        out
    }

    #[test]
    fn decodes_error_string() {
        let data = error_string("not enough balance");
        assert_eq!(
            decode_revert_reason(&data).as_deref(),
            Some("not enough balance")
        );
    }

    #[test]
    fn decodes_panic_codes() {
        let mut data = PANIC_SELECTOR.to_vec();
        data.extend_from_slice(&U256::from(0x11).to_be_bytes::<32>());
        assert_eq!(
            decode_revert_reason(&data).as_deref(),
            Some("arithmetic underflow or overflow")
        );
        let mut data = PANIC_SELECTOR.to_vec();
        data.extend_from_slice(&U256::from(0x99).to_be_bytes::<32>());
        assert_eq!(
            decode_revert_reason(&data).as_deref(),
            Some("unknown panic code: 0x99")
        );
    }

    #[test]
    fn rejects_malformed_and_custom_errors() {
        assert_eq!(decode_revert_reason(&[]), None);
        assert_eq!(decode_revert_reason(&hex!("08c379a0")), None);
        // Offset pointing far outside the data.
        let mut data = ERROR_SELECTOR.to_vec();
        data.extend_from_slice(&[0xff; 32]);
        assert_eq!(decode_revert_reason(&data), None);
        // A custom error `Unauthorized()`.
        assert_eq!(decode_revert_reason(&hex!("82b42900")), None);
    }

    #[test]
    fn revert_error_carries_data() {
        let data = Bytes::from(error_string("nope"));
        let err = execution_reverted(&data);
        assert_eq!(err.code(), 3);
        assert_eq!(err.message(), "execution reverted: nope");
        let json = serde_json::to_value(&err).unwrap();
        assert_eq!(json["data"], serde_json::Value::String(data.to_string()));
        let empty = execution_reverted(&Bytes::new());
        assert_eq!(empty.message(), "execution reverted");
        assert_eq!(serde_json::to_value(&empty).unwrap()["data"], "0x");
    }
}
