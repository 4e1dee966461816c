//! Signing for the accounts the node holds keys for (on the devnet, its ten dev accounts, as
//! anvil and hardhat do): `eth_sendTransaction`, `eth_signTransaction`, `eth_sign`,
//! `personal_sign` and `eth_signTypedData_v4` (EIP-712). Fields a request leaves out are filled
//! as geth fills them: the pending nonce, the estimated gas, EIP-1559 fees from the next base fee
//! and the suggested tip, the chain id. Elsewhere every account is unknown
//! (`-32000 unknown account`).

use alloy_consensus::TypedTransaction;
use alloy_dyn_abi::TypedData;
use alloy_primitives::{Address, B256, Bytes, TxKind, keccak256};
use alloy_rpc_types_eth::TransactionRequest;
use jsonrpsee::core::RegisterMethodError;
use jsonrpsee::types::Params;

use std::{sync::Arc, time::Duration};

use crate::RpcContext;
use crate::backend::{BackendError, StateAt};
use crate::error::{RpcResult, from_backend, invalid_params, method_not_found, server_error};
use crate::eth::{Module, estimated_gas, normalize_input, register_heavy};
use crate::params::{Args, HexOrDecimal};

pub(crate) fn register(module: &mut Module) -> Result<(), RegisterMethodError> {
    register_heavy(module, "eth_sendTransaction", send_transaction)?;
    register_heavy(module, "eth_signTransaction", sign_transaction)?;
    register_heavy(module, "eth_sign", eth_sign)?;
    register_heavy(module, "personal_sign", personal_sign)?;
    // v3 is v4 without arrays and recursive structs: the v4 encoding of what v3 can express is
    // the same, so one handler serves both, as anvil's does.
    register_heavy(module, "eth_signTypedData_v4", sign_typed_data)?;
    register_heavy(module, "eth_signTypedData_v3", sign_typed_data)?;
    module.register_async_method("evm_mine", |params, ctx, _| evm_mine(ctx, params))?;
    Ok(())
}

/// The request with every field filled, as the transaction `from` signs.
fn filled(
    ctx: &RpcContext,
    mut request: TransactionRequest,
) -> RpcResult<(Address, TypedTransaction)> {
    normalize_input(&mut request)?;
    let from = request
        .from
        .ok_or_else(|| invalid_params("missing \"from\": the account to send from"))?;
    if !ctx.backend.accounts().contains(&from) {
        return Err(from_backend(BackendError::UnknownAccount));
    }
    request.to.get_or_insert(TxKind::Create);
    request.chain_id.get_or_insert(ctx.backend.chain_id());
    if request.nonce.is_none() {
        request.nonce = Some(ctx.backend.pending_nonce(from).map_err(from_backend)?);
    }
    if request.gas_price.is_none() {
        let tip = request
            .max_priority_fee_per_gas
            .unwrap_or_else(|| ctx.backend.suggested_priority_fee());
        // Room for the base fee to double, as geth's and viem's defaults leave.
        let cap = request
            .max_fee_per_gas
            .unwrap_or_else(|| 2 * u128::from(ctx.backend.next_base_fee()) + tip);
        request.max_fee_per_gas = Some(cap);
        request.max_priority_fee_per_gas = Some(tip.min(cap));
    }
    if request.gas.is_none() {
        request.gas = Some(estimated_gas(ctx, &request, StateAt::Latest, None)?);
    }
    let tx = request
        .build_consensus_tx()
        .map_err(|e| invalid_params(format!("cannot build the transaction: {}", e.error)))?;
    Ok((from, tx))
}

/// The call object of `params`, filled and signed: its raw EIP-2718 bytes.
fn signed(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Bytes> {
    let mut args = Args::new(params, 1)?;
    let request: TransactionRequest = args.required()?;
    let (from, tx) = filled(ctx, request)?;
    ctx.backend.sign_transaction(from, tx).map_err(from_backend)
}

fn send_transaction(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<B256> {
    let raw = signed(ctx, params)?;
    ctx.backend.send_raw_transaction(raw).map_err(from_backend)
}

/// geth answers `{raw, tx}`; the raw bytes are what clients use.
fn sign_transaction(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<serde_json::Value> {
    let raw = signed(ctx, params)?;
    Ok(serde_json::json!({ "raw": raw, "hash": keccak256(&raw) }))
}

/// `eth_sign(address, data)`: EIP-191 over `data`.
fn eth_sign(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Bytes> {
    let mut args = Args::new(params, 2)?;
    let from: Address = args.required()?;
    let data: Bytes = args.required()?;
    ctx.backend.sign_message(from, &data).map_err(from_backend)
}

/// `personal_sign(data, address)`: the same signature, arguments the other way round.
fn personal_sign(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Bytes> {
    let mut args = Args::new(params, 3)?;
    let data: Bytes = args.required()?;
    let from: Address = args.required()?;
    ctx.backend.sign_message(from, &data).map_err(from_backend)
}

/// `eth_signTypedData_v4(address, typedData)`: an EIP-712 signature (65 bytes, v 27/28) over the
/// typed data's signing hash. The typed data comes as a JSON object or, as MetaMask and viem
/// send it, as a string holding that JSON.
fn sign_typed_data(ctx: &RpcContext, params: &Params<'_>) -> RpcResult<Bytes> {
    let mut args = Args::new(params, 2)?;
    let from: Address = args.required()?;
    let typed: serde_json::Value = args.required()?;
    if !ctx.backend.accounts().contains(&from) {
        return Err(from_backend(BackendError::UnknownAccount));
    }
    let typed: TypedData = match typed {
        serde_json::Value::String(json) => serde_json::from_str(&json),
        object => serde_json::from_value(object),
    }
    .map_err(|e| invalid_params(format!("invalid argument 1: typed data: {e}")))?;
    let hash = typed
        .eip712_signing_hash()
        .map_err(|e| invalid_params(format!("invalid argument 1: typed data: {e}")))?;
    ctx.backend.sign_hash(from, hash).map_err(from_backend)
}

/// At most this many blocks per `evm_mine`.
const MINE_BLOCKS_MAX: u64 = 1_000;
/// How long `evm_mine` waits for each block to be sealed.
const MINE_BLOCK_WAIT: Duration = Duration::from_secs(30);

/// `evm_mine()`, `evm_mine({blocks})` (anvil's and hardhat's), on the devnet only: answers `"0x0"`
/// once that many more blocks are sealed. The sequencer seals a block (empty if need be) every
/// block interval on its own, so mining is waiting for it: a block made outside that schedule
/// would be an edit beside the durable log. A timestamp cannot be chosen, because blocks carry
/// the wall-clock time of their sealing, and asking for one is refused.
async fn evm_mine(ctx: Arc<RpcContext>, params: Params<'static>) -> RpcResult<String> {
    if ctx.backend.accounts().is_empty() {
        return Err(method_not_found("evm_mine"));
    }
    let blocks = {
        let mut args = Args::new(&params, 1)?;
        match args.optional::<serde_json::Value>()? {
            None => 1,
            Some(serde_json::Value::Object(options)) => {
                if options.get("timestamp").is_some_and(|t| !t.is_null()) {
                    return Err(fixed_timestamps());
                }
                match options.get("blocks") {
                    None | Some(serde_json::Value::Null) => 1,
                    Some(n) => serde_json::from_value::<HexOrDecimal>(n.clone())
                        .ok()
                        .map(|n| n.0)
                        .filter(|n| (1..=MINE_BLOCKS_MAX).contains(n))
                        .ok_or_else(|| {
                            invalid_params(format!(
                                "invalid argument 0: blocks must be 1 to {MINE_BLOCKS_MAX}"
                            ))
                        })?,
                }
            }
            Some(_) => return Err(fixed_timestamps()),
        }
    };
    let Some(mut sealed) = ctx.backend.sealed_watch() else {
        return Err(method_not_found("evm_mine"));
    };
    let target = *sealed.borrow_and_update() + blocks;
    let wait = MINE_BLOCK_WAIT * blocks as u32;
    match tokio::time::timeout(wait, sealed.wait_for(|n| *n >= target)).await {
        Ok(Ok(_)) => Ok("0x0".to_owned()),
        Ok(Err(_)) => Err(server_error("the node is shutting down")),
        Err(_) => Err(server_error(format!(
            "block {target} was not sealed within {} s",
            wait.as_secs()
        ))),
    }
}

fn fixed_timestamps() -> jsonrpsee::types::ErrorObjectOwned {
    invalid_params(
        "evm_mine: a block's timestamp cannot be chosen here (blocks carry the wall-clock time \
         they are sealed at); call evm_mine() or evm_mine({\"blocks\": n})",
    )
}
