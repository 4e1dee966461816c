//! Chain rules the executor applies; identical on every validator of a chain.

use alloy_eips::eip1559::BaseFeeParams;
use alloy_primitives::Address;
use revm::{context::CfgEnv, primitives::hardfork::SpecId};
use serde::{Deserialize, Serialize};

/// Geth's limit on a transaction's encoded size (txMaxSize = 4 slots of 32 KiB). Bigger
/// transactions are refused before decoding so that one client cannot make the node hash and
/// store megabytes.
pub const DEFAULT_MAX_TX_SIZE_BYTES: usize = 128 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecConfig {
    pub chain_id: u64,
    /// EVM rules; Prague by default. Configuration, not code, so a chain can move forward.
    #[serde(with = "spec_serde")]
    pub spec: SpecId,
    /// Gas limit of every EVM block; also the cap on one transaction's gas.
    pub block_gas_limit: u64,
    /// Receives priority fees.
    pub coinbase: Address,
    pub max_tx_size_bytes: usize,
    /// Accept legacy transactions without a chain id (pre-EIP-155). Off, as geth's RPC has it:
    /// such a transaction can be replayed on any chain.
    pub allow_unprotected_txs: bool,
    /// EIP-1559 change denominator and elasticity.
    pub base_fee_max_change_denominator: u64,
    pub base_fee_elasticity_multiplier: u64,
    /// Where the state keeps the L1 origin's parent beacon root, which EIP-4788's system call
    /// stores at each block's start and the header carries; `None`: zero.
    #[serde(default)]
    pub beacon_root_source: Option<crate::system::StorageLocation>,
}

impl ExecConfig {
    pub fn dev(chain_id: u64) -> Self {
        Self {
            chain_id,
            spec: SpecId::PRAGUE,
            block_gas_limit: 300_000_000,
            coinbase: Address::ZERO,
            max_tx_size_bytes: DEFAULT_MAX_TX_SIZE_BYTES,
            allow_unprotected_txs: false,
            base_fee_max_change_denominator: 8,
            base_fee_elasticity_multiplier: 2,
            beacon_root_source: None,
        }
    }

    pub fn base_fee_params(&self) -> BaseFeeParams {
        BaseFeeParams::new(
            self.base_fee_max_change_denominator as u128,
            self.base_fee_elasticity_multiplier as u128,
        )
    }

    /// The revm configuration for this chain.
    pub fn cfg_env(&self) -> CfgEnv {
        let mut cfg = CfgEnv::new_with_spec(self.spec);
        cfg.chain_id = self.chain_id;
        // revm checks a blob transaction's blob count only when told the bound. This chain
        // refuses blob transactions at admission (tx.rs), but the executor still enforces the
        // fork's rule so that conformance runs, which execute them, see mainnet behaviour.
        cfg.max_blobs_per_tx = Some(max_blobs_per_tx(self.spec));
        cfg
    }

    /// Base fee of the block after one with `gas_used` of `gas_limit` at `base_fee`.
    pub fn next_base_fee(&self, gas_used: u64, gas_limit: u64, base_fee: u64) -> u64 {
        alloy_eips::eip1559::calc_next_block_base_fee(
            gas_used,
            gas_limit,
            base_fee,
            self.base_fee_params(),
        )
    }
}

/// Most blobs one transaction may carry: all a block may hold (EIP-4844: 6; EIP-7691, Prague:
/// 9) until Osaka caps a transaction at 6 (EIP-7594).
fn max_blobs_per_tx(spec: SpecId) -> u64 {
    if spec.is_enabled_in(SpecId::OSAKA) {
        6
    } else if spec.is_enabled_in(SpecId::PRAGUE) {
        revm::primitives::eip4844::MAX_BLOB_NUMBER_PER_BLOCK_PRAGUE
    } else {
        revm::primitives::eip4844::MAX_BLOB_NUMBER_PER_BLOCK_CANCUN
    }
}

/// Specs by the names geth and revm use ("Prague", "Cancun", ...).
mod spec_serde {
    use revm::primitives::hardfork::SpecId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(spec: &SpecId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(<&'static str>::from(*spec))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SpecId, D::Error> {
        let name = String::deserialize(d)?;
        name.parse::<SpecId>()
            .map_err(|_| serde::de::Error::custom(format!("unknown EVM spec {name:?}")))
    }
}
