//! The `debug_trace*` methods: geth's names, parameters and result shapes (the struct logger,
//! `callTracer`, `prestateTracer` and the other built-in tracers); the backend re-executes.

use alloy_eips::{BlockId, BlockNumberOrTag};
use alloy_primitives::B256;
use alloy_rpc_types_eth::TransactionRequest;
use alloy_rpc_types_trace::geth::{
    GethDebugTracingCallOptions, GethDebugTracingOptions, GethTrace, TraceResult,
};
use jsonrpsee::core::RegisterMethodError;
use jsonrpsee::types::Params;

use crate::RpcContext;
use crate::backend::BackendError;
use crate::error::{RpcResult, from_backend};
use crate::eth::{Module, normalize_input, register_heavy, tag_number};
use crate::params::Args;

pub(crate) fn register(module: &mut Module) -> Result<(), RegisterMethodError> {
    register_heavy(module, "debug_traceTransaction", trace_transaction)?;
    register_heavy(module, "debug_traceBlockByNumber", trace_block_by_number)?;
    register_heavy(module, "debug_traceBlockByHash", trace_block_by_hash)?;
    register_heavy(module, "debug_traceCall", trace_call)?;
    Ok(())
}

fn trace_transaction(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<GethTrace> {
    let mut args = Args::new(params, 2)?;
    let hash: B256 = args.required()?;
    let options: Option<GethDebugTracingOptions> = args.optional()?;
    ctx.backend
        .trace_transaction(hash, &options.unwrap_or_default())
        .map_err(from_backend)
}

fn trace_block_by_number(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Vec<TraceResult>> {
    let mut args = Args::new(params, 2)?;
    let tag: BlockNumberOrTag = args.required()?;
    let options: Option<GethDebugTracingOptions> = args.optional()?;
    let head = ctx.backend.head();
    let number = tag_number(tag, &head);
    if number > head.block_number {
        return Err(from_backend(BackendError::NotFound(format!(
            "block #{number} not found"
        ))));
    }
    ctx.backend
        .trace_block(number, &options.unwrap_or_default())
        .map_err(from_backend)
}

fn trace_block_by_hash(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Vec<TraceResult>> {
    let mut args = Args::new(params, 2)?;
    let hash: B256 = args.required()?;
    let options: Option<GethDebugTracingOptions> = args.optional()?;
    let number = ctx
        .backend
        .block_number_by_hash(hash)
        .map_err(from_backend)?
        .ok_or_else(|| from_backend(BackendError::NotFound(format!("block {hash} not found"))))?;
    ctx.backend
        .trace_block(number, &options.unwrap_or_default())
        .map_err(from_backend)
}

fn trace_call(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<GethTrace> {
    let mut args = Args::new(params, 3)?;
    let mut request: TransactionRequest = args.required()?;
    let block: Option<BlockId> = args.optional()?;
    let options: Option<GethDebugTracingCallOptions> = args.optional()?;
    normalize_input(&mut request)?;
    // geth traces a call at `latest` when no block is given.
    let at = ctx.state_at(block)?;
    ctx.backend
        .trace_call(&request, at, &options.unwrap_or_default())
        .map_err(from_backend)
}
