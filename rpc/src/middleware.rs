//! Where jsonrpsee's defaults differ from geth's answers, and clients notice:
//! - an unknown method answers -32601 with geth's text "the method X does not exist/is not
//!   available" (viem's `eth_fillTransaction` fallback keys on the code; people read the text);
//! - eth_subscribe / eth_unsubscribe over plain HTTP answer -32601 "notifications not supported"
//!   (jsonrpsee would say -32603 "Internal error");
//! - subscription ids are random 128-bit hex strings like geth's, not integers;
//! - CORS answers the origins the node allows (by default: pages on this machine), and a
//!   WebSocket upgrade from a page of another origin is refused with 403 (see
//!   [`crate::origins`]).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;

use futures::future::{Either, Ready, ready};
use jsonrpsee::server::IdProvider;
use jsonrpsee::server::middleware::rpc::{
    Batch, BatchEntry, BatchEntryErr, MethodResponse, Notification, Request, RpcServiceT,
};
use jsonrpsee::server::{HttpBody, HttpRequest, HttpResponse};
use jsonrpsee::types::ErrorObjectOwned;
use jsonrpsee::types::SubscriptionId;

use crate::error::{method_not_found, notifications_unsupported};
use crate::origins::OriginPolicy;

/// Marks a request that arrived as a plain HTTP POST (not on a WebSocket). jsonrpsee copies the
/// HTTP request's extensions into each JSON-RPC request it carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlainHttp;

/// HTTP middleware step: tags every request that is not a WebSocket upgrade.
pub(crate) fn mark_plain_http(mut request: HttpRequest) -> HttpRequest {
    let is_upgrade = request
        .headers()
        .get("upgrade")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"));
    if !is_upgrade {
        request.extensions_mut().insert(PlainHttp);
    }
    request
}

/// CORS for the allowed origins, any header and method: browser tools on an allowed origin
/// reach the node; other pages' requests get no CORS grant, so the browser withholds the answer.
pub(crate) fn cors(origins: Arc<OriginPolicy>) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    let allow = if origins.allows_any() {
        AllowOrigin::any()
    } else {
        AllowOrigin::predicate(move |origin, _| {
            origin.to_str().is_ok_and(|origin| origins.allows(origin))
        })
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods(Any)
        .allow_headers(Any)
}

/// Refuses (403) a WebSocket upgrade whose `Origin` is not allowed. CORS does not apply to
/// WebSockets: without this, any page the user opens could use a local node's subscriptions.
#[derive(Debug, Clone)]
pub(crate) struct WsOriginLayer {
    origins: Arc<OriginPolicy>,
}

impl WsOriginLayer {
    pub(crate) fn new(origins: Arc<OriginPolicy>) -> Self {
        Self { origins }
    }
}

impl<S> tower::Layer<S> for WsOriginLayer {
    type Service = WsOrigin<S>;

    fn layer(&self, inner: S) -> WsOrigin<S> {
        WsOrigin {
            inner,
            origins: self.origins.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct WsOrigin<S> {
    inner: S,
    origins: Arc<OriginPolicy>,
}

impl<S, B> tower::Service<http::Request<B>> for WsOrigin<S>
where
    S: tower::Service<http::Request<B>, Response = HttpResponse>,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<HttpResponse, S::Error>>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let headers = request.headers();
        let upgrade = headers
            .get("upgrade")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
        let refused = headers.get("origin").is_some_and(|origin| {
            !origin
                .to_str()
                .is_ok_and(|origin| self.origins.allows(origin))
        });
        if upgrade && refused {
            let mut response = HttpResponse::new(HttpBody::from(
                "WebSocket origin not allowed (rpc.allowed_origins)",
            ));
            *response.status_mut() = http::StatusCode::FORBIDDEN;
            return Either::Right(ready(Ok(response)));
        }
        Either::Left(self.inner.call(request))
    }
}

/// RPC middleware that answers geth's errors for unknown methods and for subscriptions over
/// HTTP before jsonrpsee's own (differently worded) answers.
#[derive(Debug, Clone)]
pub(crate) struct GethCompat<S> {
    inner: S,
    known_methods: Arc<HashSet<&'static str>>,
}

impl<S> GethCompat<S> {
    pub(crate) fn new(inner: S, known_methods: Arc<HashSet<&'static str>>) -> Self {
        Self {
            inner,
            known_methods,
        }
    }

    /// The error to answer instead of calling the method, if any.
    fn refusal(&self, request: &Request<'_>) -> Option<ErrorObjectOwned> {
        let method = request.method_name();
        if !self.known_methods.contains(method) {
            return Some(method_not_found(method));
        }
        let is_pubsub = method == "eth_subscribe" || method == "eth_unsubscribe";
        if is_pubsub && request.extensions().get::<PlainHttp>().is_some() {
            return Some(notifications_unsupported());
        }
        None
    }
}

impl<S> RpcServiceT for GethCompat<S>
where
    S: RpcServiceT<
            MethodResponse = MethodResponse,
            BatchResponse = MethodResponse,
            NotificationResponse = MethodResponse,
        > + Send
        + Sync,
{
    type MethodResponse = MethodResponse;
    type NotificationResponse = MethodResponse;
    type BatchResponse = MethodResponse;

    fn call<'a>(
        &self,
        request: Request<'a>,
    ) -> impl Future<Output = Self::MethodResponse> + Send + 'a {
        let refused: Option<Ready<MethodResponse>> = self.refusal(&request).map(|error| {
            let extensions = request.extensions().clone();
            ready(MethodResponse::error(request.id.clone(), error).with_extensions(extensions))
        });
        match refused {
            Some(response) => Either::Left(response),
            None => Either::Right(self.inner.call(request)),
        }
    }

    fn batch<'a>(
        &self,
        mut batch: Batch<'a>,
    ) -> impl Future<Output = Self::BatchResponse> + Send + 'a {
        for entry in batch.iter_mut() {
            let refusal = match entry {
                Ok(BatchEntry::Call(request)) => self
                    .refusal(request)
                    .map(|error| (request.id.clone(), error)),
                _ => None,
            };
            if let Some((id, error)) = refusal {
                *entry = Err(BatchEntryErr::new(id, error));
            }
        }
        self.inner.batch(batch)
    }

    fn notification<'a>(
        &self,
        notification: Notification<'a>,
    ) -> impl Future<Output = Self::NotificationResponse> + Send + 'a {
        self.inner.notification(notification)
    }
}

/// Subscription ids as geth makes them: "0x" and 32 random hex digits. Random so that another
/// client cannot guess and cancel someone's subscription.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HexIdProvider;

impl IdProvider for HexIdProvider {
    fn next_id(&self) -> SubscriptionId<'static> {
        SubscriptionId::Str(random_hex_id().into())
    }
}

/// 128 random bits as "0x" + 32 hex digits (filter and subscription ids).
pub(crate) fn random_hex_id() -> String {
    let bytes: [u8; 16] = rand::random();
    format!("0x{}", alloy_primitives::hex::encode(bytes))
}
