//! rtchain's Ethereum JSON-RPC server: HTTP and WebSocket on one port (jsonrpsee), speaking
//! geth's dialect (method names, block tags, error codes and messages) so that viem, ethers,
//! web3.py, alloy and cast work unchanged, plus the real-time additions: EIP-7966
//! `eth_sendRawTransactionSync` (alias `realtime_sendRawTransaction`) and the `miniBlocks`
//! subscription.
//!
//! This crate owns JSON, parameter parsing, block-tag resolution, filters and subscriptions, and
//! the limits that keep one client from exhausting the node. It owns no chain data: everything
//! comes from the node through the [`Backend`] trait (see `backend.rs`), so the server is tested
//! here over an in-memory double and the node is tested end to end elsewhere.
//!
//! The method list, tags, error codes and limits are documented in `docs/rpc.md`.

mod accounts;
pub mod backend;
mod convert;
mod debug;
pub mod error;
mod eth;
mod filters;
mod middleware;
pub mod origins;
mod params;
mod pubsub;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jsonrpsee::RpcModule;
use jsonrpsee::server::middleware::rpc::RpcServiceBuilder;
use jsonrpsee::server::{BatchRequestConfig, Server, ServerConfig, ServerHandle};

pub use backend::{
    Backend, BackendError, CallOutcome, ChainEvent, ChainHead, ReceiptView, ReceiptWait, StateAt,
    TxView, wait_on,
};
pub use error::RpcError;

/// Server configuration. Every field is a bound: a client that hits one gets an error naming
/// it, and memory and work per client stay bounded.
#[derive(Debug, Clone)]
pub struct RpcConfig {
    /// Where HTTP and WebSocket are served (same port; a WebSocket is an HTTP upgrade).
    pub addr: SocketAddr,
    /// Largest request (HTTP body or WebSocket message). 5 MiB as geth: a batch of about 19
    /// maximum-size (128 KiB) transactions, hex-encoded, still fits.
    pub max_request_body_bytes: u32,
    /// Largest response. 32 MiB: a full 10,000-transaction block or 10,000 logs fit.
    pub max_response_body_bytes: u32,
    /// Concurrent HTTP and WebSocket connections; more are refused at accept.
    pub max_connections: u32,
    /// Subscriptions one WebSocket connection may hold.
    pub max_subscriptions_per_connection: u32,
    /// Calls in one JSON-RPC batch.
    pub max_batch_len: u32,
    /// Logs one eth_getLogs / eth_getFilterLogs / eth_getFilterChanges answer may hold.
    pub max_logs_per_query: usize,
    /// Blocks one log query may span (`toBlock - fromBlock + 1`).
    pub max_block_range: u64,
    /// Installed filters (eth_newFilter, eth_newBlockFilter, eth_newPendingTransactionFilter),
    /// all clients together.
    pub max_filters: usize,
    /// A filter not polled for this long is removed (geth: 5 minutes).
    pub filter_timeout: Duration,
    /// How long eth_sendRawTransactionSync waits for the receipt when the client gives no
    /// timeout (EIP-7966 recommends 2 s).
    pub send_sync_timeout_default: Duration,
    /// Longest wait a client may ask for; a larger or zero timeout falls back to the default,
    /// as EIP-7966 says.
    pub send_sync_timeout_max: Duration,
    /// eth_sendRawTransactionSync calls waiting for their receipt at once; one more is refused
    /// (-32005) before its transaction is submitted.
    pub max_sync_sends_waiting: usize,
    /// Heavy calls (eth_call, eth_estimateGas, eth_createAccessList, eth_getLogs, eth_getProof,
    /// eth_feeHistory, filter polls) running at once on the blocking pool; more wait in line,
    /// first come first served, so a flood of them cannot occupy every thread of the process.
    pub max_concurrent_heavy_calls: usize,
    /// Web origins whose pages may call the RPC (CORS) and open WebSockets: `"local"` (any
    /// port on localhost, 127.0.0.1, [::1]), `"*"`, or exact origins such as
    /// `"https://app.example.org"`. Requests without an `Origin` (not from a browser page) are
    /// always served. See [`origins`].
    pub allowed_origins: Vec<String>,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8545)),
            max_request_body_bytes: 5 * 1024 * 1024,
            max_response_body_bytes: 32 * 1024 * 1024,
            max_connections: 512,
            max_subscriptions_per_connection: 128,
            max_batch_len: 100,
            max_logs_per_query: 10_000,
            max_block_range: 10_000,
            max_filters: 2_048,
            filter_timeout: Duration::from_secs(5 * 60),
            send_sync_timeout_default: Duration::from_secs(2),
            send_sync_timeout_max: Duration::from_secs(30),
            max_sync_sends_waiting: 4_096,
            max_concurrent_heavy_calls: 32,
            allowed_origins: vec!["local".to_owned()],
        }
    }
}

impl RpcConfig {
    fn validate(&self) -> Result<(), RpcError> {
        let positive = [
            ("max_request_body_bytes", self.max_request_body_bytes as u64),
            (
                "max_response_body_bytes",
                self.max_response_body_bytes as u64,
            ),
            ("max_connections", self.max_connections as u64),
            (
                "max_subscriptions_per_connection",
                self.max_subscriptions_per_connection as u64,
            ),
            ("max_batch_len", self.max_batch_len as u64),
            ("max_logs_per_query", self.max_logs_per_query as u64),
            ("max_block_range", self.max_block_range),
            ("max_filters", self.max_filters as u64),
            ("max_sync_sends_waiting", self.max_sync_sends_waiting as u64),
            (
                "max_concurrent_heavy_calls",
                self.max_concurrent_heavy_calls as u64,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(RpcError::Config(format!("{name} must be at least 1")));
            }
        }
        origins::OriginPolicy::parse(&self.allowed_origins).map_err(RpcError::Config)?;
        if self.filter_timeout.is_zero() {
            return Err(RpcError::Config("filter_timeout must be positive".into()));
        }
        if self.send_sync_timeout_default.is_zero()
            || self.send_sync_timeout_default > self.send_sync_timeout_max
        {
            return Err(RpcError::Config(format!(
                "send_sync_timeout_default ({:?}) must be positive and at most \
                 send_sync_timeout_max ({:?})",
                self.send_sync_timeout_default, self.send_sync_timeout_max
            )));
        }
        Ok(())
    }
}

/// State shared by all handlers.
pub(crate) struct RpcContext {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) config: RpcConfig,
    pub(crate) filters: filters::FilterRegistry,
    /// One permit per eth_sendRawTransactionSync call waiting for its receipt.
    pub(crate) sync_sends: Arc<tokio::sync::Semaphore>,
    /// One permit per heavy call running on the blocking pool.
    pub(crate) heavy_calls: Arc<tokio::sync::Semaphore>,
}

/// A running server.
#[derive(Debug, Clone)]
pub struct RpcHandle {
    local_addr: SocketAddr,
    handle: ServerHandle,
}

impl RpcHandle {
    /// The bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Asks the server to stop: it stops accepting and closes connections once their calls end.
    /// Calling it twice is harmless.
    pub fn stop(&self) {
        // An error only says the server already stopped.
        let _ = self.handle.stop();
    }

    /// Completes when the server has stopped.
    pub async fn stopped(self) {
        self.handle.stopped().await
    }

    pub fn is_stopped(&self) -> bool {
        self.handle.is_stopped()
    }
}

/// Binds `config.addr` and serves JSON-RPC over HTTP and WebSocket from `backend` until
/// [`RpcHandle::stop`] (or until the handle and all its clones are dropped). Must be called
/// inside a tokio runtime.
pub async fn start(config: RpcConfig, backend: Arc<dyn Backend>) -> Result<RpcHandle, RpcError> {
    config.validate()?;
    let context = Arc::new(RpcContext {
        backend,
        filters: filters::FilterRegistry::new(config.max_filters, config.filter_timeout),
        sync_sends: Arc::new(tokio::sync::Semaphore::new(config.max_sync_sends_waiting)),
        heavy_calls: Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_heavy_calls,
        )),
        config: config.clone(),
    });

    let mut module = RpcModule::from_arc(context.clone());
    eth::register(&mut module)?;
    debug::register(&mut module)?;
    accounts::register(&mut module)?;
    filters::register(&mut module)?;
    pubsub::register(&mut module)?;
    let known_methods: Arc<HashSet<&'static str>> = Arc::new(module.method_names().collect());

    // Feeds pending-transaction filters and expires idle filters; ends with the server.
    filters::spawn_maintenance(Arc::downgrade(&context), context.backend.subscribe());
    drop(context);

    let server_config = ServerConfig::builder()
        .max_request_body_size(config.max_request_body_bytes)
        .max_response_body_size(config.max_response_body_bytes)
        .max_connections(config.max_connections)
        .max_subscriptions_per_connection(config.max_subscriptions_per_connection)
        .set_batch_request_config(BatchRequestConfig::Limit(config.max_batch_len))
        .set_id_provider(middleware::HexIdProvider)
        .build();
    let origins =
        Arc::new(origins::OriginPolicy::parse(&config.allowed_origins).map_err(RpcError::Config)?);
    let http_middleware = tower::ServiceBuilder::new()
        .layer(middleware::WsOriginLayer::new(origins.clone()))
        .layer(middleware::cors(origins))
        .map_request(middleware::mark_plain_http);
    let rpc_middleware = RpcServiceBuilder::new()
        .layer_fn(move |inner| middleware::GethCompat::new(inner, known_methods.clone()));

    let server = Server::builder()
        .set_config(server_config)
        .set_http_middleware(http_middleware)
        .set_rpc_middleware(rpc_middleware)
        .build(config.addr)
        .await
        .map_err(|source| RpcError::Bind {
            addr: config.addr,
            source,
        })?;
    let local_addr = server.local_addr().map_err(|source| RpcError::Bind {
        addr: config.addr,
        source,
    })?;
    let handle = server.start(module);
    tracing::info!(target: "rpc", %local_addr, "JSON-RPC listening (HTTP and WebSocket)");
    Ok(RpcHandle { local_addr, handle })
}
