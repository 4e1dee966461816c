//! Genesis: a geth-style `genesis.json` (`config.chainId`, `alloc`, `gasLimit`,
//! `baseFeePerGas`, `timestamp`, ...) or the built-in dev genesis.

use std::{collections::HashMap, path::Path};

use alloy_consensus::{EMPTY_OMMER_ROOT_HASH, Header};
use alloy_eips::eip7685::EMPTY_REQUESTS_HASH;
use alloy_primitives::{Address, B256, Bloom, Bytes, U256, address};
use alloy_trie::EMPTY_ROOT_HASH;
use revm::{bytecode::Bytecode, primitives::KECCAK_EMPTY, state::AccountInfo};
use rtchain_exec::{AccountChange, MemoryState, StateDiff};

/// The 10 accounts of the mnemonic `test test test test test test test test test test test
/// junk` (derivation path m/44'/60'/0'/0/i), which anvil and hardhat fund too.
pub const DEV_ACCOUNTS: [Address; 10] = [
    address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266"),
    address!("70997970C51812dc3A010C7d01b50e0d17dc79C8"),
    address!("3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"),
    address!("90F79bf6EB2c4f870365E785982E1f101E93b906"),
    address!("15d34AAf54267DB7D7c367839AAf71A00a2C6A65"),
    address!("9965507D1a55bcC2695C58ba16FB37d819B0A4dc"),
    address!("976EA74026E726554dB657fA54763abd0C3a0aa9"),
    address!("14dC79964da2C08b23698B3D3cc7Ca32193d9955"),
    address!("23618e81E3f5cdF7f54C3d65f7FBc0aBf5B21E8f"),
    address!("a0Ee7A142d267C1f36714E4a8F75612F20a79720"),
];

pub const DEV_MNEMONIC: &str = "test test test test test test test test test test test junk";

#[derive(Debug, thiserror::Error)]
pub enum GenesisError {
    #[error("genesis file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("genesis file {path}: invalid JSON: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("genesis: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Genesis {
    pub chain_id: u64,
    pub gas_limit: u64,
    pub base_fee: u64,
    pub timestamp: u64,
    pub extra_data: Bytes,
    pub coinbase: Address,
    pub mix_hash: B256,
    pub alloc: Vec<(Address, GenesisAccount)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GenesisAccount {
    pub balance: U256,
    pub nonce: u64,
    pub code: Option<Bytes>,
    pub storage: Vec<(U256, U256)>,
}

/// Geth's default initial base fee (1 gwei).
pub const INITIAL_BASE_FEE: u64 = 1_000_000_000;

/// The deterministic CREATE2 deployer (Arachnid's proxy), at the same address on anvil,
/// hardhat, OP chains (a preinstall) and nearly every public chain: `forge script` and other
/// tools deploy through it with a salt, so contract addresses match across chains.
pub const CREATE2_DEPLOYER: Address = address!("0x4e59b44847b379578588920cA78FbF26c0B4956C");

/// Its runtime code: calldata is a 32-byte salt followed by the init code; it CREATE2s the init
/// code with that salt and the call's value, and returns the new address (reverting if the
/// creation fails).
pub const CREATE2_DEPLOYER_CODE: [u8; 69] = alloy_primitives::hex!(
    "7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffe03601600081602082378035828234f58015156039578182fd5b8082525050506014600cf3"
);

/// Contracts every rtchain genesis carries where its allocation leaves the address free, as OP
/// chains' preinstalls: the CREATE2 deployer, and the system contracts of EIP-4788 (beacon
/// roots) and EIP-2935 (block hashes) that every block's start calls, with nonce 1 as geth's dev
/// genesis and their mainnet deployments have them.
pub fn preinstalls() -> Vec<(Address, GenesisAccount)> {
    use rtchain_exec::system;
    let contract = |code: Bytes, nonce: u64| GenesisAccount {
        code: Some(code),
        nonce,
        ..Default::default()
    };
    vec![
        (
            CREATE2_DEPLOYER,
            contract(Bytes::from_static(&CREATE2_DEPLOYER_CODE), 0),
        ),
        (
            system::BEACON_ROOTS_ADDRESS,
            contract(system::BEACON_ROOTS_CODE.clone(), 1),
        ),
        (
            system::HISTORY_STORAGE_ADDRESS,
            contract(system::HISTORY_STORAGE_CODE.clone(), 1),
        ),
    ]
}

impl Genesis {
    /// The built-in dev genesis: chain `chain_id`, the 10 dev accounts with 10,000 ETH each.
    pub fn dev(chain_id: u64, gas_limit: u64) -> Self {
        let balance = U256::from(10_000u64) * U256::from(10u64).pow(U256::from(18u64));
        Self {
            chain_id,
            gas_limit,
            base_fee: INITIAL_BASE_FEE,
            timestamp: 0,
            extra_data: Bytes::from_static(b"rtchain dev"),
            coinbase: Address::ZERO,
            mix_hash: B256::ZERO,
            alloc: DEV_ACCOUNTS
                .iter()
                .map(|a| {
                    (
                        *a,
                        GenesisAccount {
                            balance,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, GenesisError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| GenesisError::Read {
            path: shown.clone(),
            source,
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| GenesisError::Parse {
                path: shown.clone(),
                source,
            })?;
        // alloy fills a missing chain id with a default; a genesis file must name its chain.
        if value.pointer("/config/chainId").is_none() {
            return Err(GenesisError::Invalid(format!(
                "{shown}: config.chainId is missing"
            )));
        }
        let parsed: alloy_genesis::Genesis =
            serde_json::from_value(value).map_err(|source| GenesisError::Parse {
                path: shown,
                source,
            })?;
        Self::from_alloy(parsed)
    }

    pub fn from_alloy(g: alloy_genesis::Genesis) -> Result<Self, GenesisError> {
        if g.config.chain_id == 0 {
            return Err(GenesisError::Invalid(
                "config.chainId must be set and non-zero".into(),
            ));
        }
        check_fork_schedule(&g.config, g.timestamp)?;
        if g.gas_limit < 21_000 {
            return Err(GenesisError::Invalid(format!(
                "gasLimit {} is below 21000",
                g.gas_limit
            )));
        }
        let base_fee = match g.base_fee_per_gas {
            None => INITIAL_BASE_FEE,
            Some(fee) => u64::try_from(fee).map_err(|_| {
                GenesisError::Invalid(format!("baseFeePerGas {fee} does not fit 64 bits"))
            })?,
        };
        let alloc = g
            .alloc
            .into_iter()
            .map(|(address, a)| {
                let storage = a
                    .storage
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (U256::from_be_bytes(k.0), U256::from_be_bytes(v.0)))
                    .filter(|(_, v)| !v.is_zero())
                    .collect();
                (
                    address,
                    GenesisAccount {
                        balance: a.balance,
                        nonce: a.nonce.unwrap_or(0),
                        code: a.code.filter(|c| !c.is_empty()),
                        storage,
                    },
                )
            })
            .collect();
        Ok(Self {
            chain_id: g.config.chain_id,
            gas_limit: g.gas_limit,
            base_fee,
            timestamp: g.timestamp,
            extra_data: g.extra_data,
            coinbase: g.coinbase,
            mix_hash: g.mix_hash,
            alloc,
        })
    }

    /// The genesis allocation as a state diff over an empty state.
    pub fn state_diff(&self) -> StateDiff {
        let mut diff = StateDiff {
            accounts: HashMap::new(),
            codes: HashMap::new(),
        };
        for (address, account) in &self.alloc {
            let code_hash = match &account.code {
                Some(code) => {
                    let hash = Bytecode::new_raw(code.clone()).hash_slow();
                    diff.codes.insert(hash, code.clone());
                    hash
                }
                None => KECCAK_EMPTY,
            };
            let info = AccountInfo {
                balance: account.balance,
                nonce: account.nonce,
                code_hash,
                ..Default::default()
            };
            diff.accounts.insert(
                *address,
                AccountChange {
                    info: Some(info),
                    storage_cleared: true,
                    storage: account.storage.iter().copied().collect(),
                },
            );
        }
        diff
    }

    /// The state root of the allocation, computed from scratch.
    pub fn state_root(&self) -> B256 {
        let mut state = MemoryState::new();
        state.apply(&self.state_diff());
        state.state_root()
    }

    /// The genesis header, given the state root of the allocation.
    pub fn header(&self, state_root: B256) -> Header {
        Header {
            parent_hash: B256::ZERO,
            ommers_hash: EMPTY_OMMER_ROOT_HASH,
            beneficiary: self.coinbase,
            state_root,
            transactions_root: EMPTY_ROOT_HASH,
            receipts_root: EMPTY_ROOT_HASH,
            logs_bloom: Bloom::ZERO,
            difficulty: U256::ZERO,
            number: 0,
            gas_limit: self.gas_limit,
            gas_used: 0,
            timestamp: self.timestamp,
            extra_data: self.extra_data.clone(),
            mix_hash: self.mix_hash,
            nonce: Default::default(),
            base_fee_per_gas: Some(self.base_fee),
            withdrawals_root: Some(EMPTY_ROOT_HASH),
            blob_gas_used: Some(0),
            excess_blob_gas: Some(0),
            parent_beacon_block_root: Some(B256::ZERO),
            requests_hash: Some(EMPTY_REQUESTS_HASH),
            ..Default::default()
        }
    }
}

/// rtchain runs every fork through Prague from genesis and none after it (the executor has one
/// spec). A genesis file's fork schedule may say so, or say nothing; one that schedules a fork
/// after genesis, or activates a later fork, describes another chain and is refused rather than
/// silently run as Prague.
fn check_fork_schedule(
    config: &alloy_genesis::ChainConfig,
    genesis_timestamp: u64,
) -> Result<(), GenesisError> {
    let blocks = [
        ("homesteadBlock", config.homestead_block),
        ("eip150Block", config.eip150_block),
        ("eip155Block", config.eip155_block),
        ("eip158Block", config.eip158_block),
        ("byzantiumBlock", config.byzantium_block),
        ("constantinopleBlock", config.constantinople_block),
        ("petersburgBlock", config.petersburg_block),
        ("istanbulBlock", config.istanbul_block),
        ("berlinBlock", config.berlin_block),
        ("londonBlock", config.london_block),
    ];
    for (name, block) in blocks {
        if let Some(block) = block.filter(|&b| b > 0) {
            return Err(GenesisError::Invalid(format!(
                "config.{name} is {block}: rtchain runs every fork through Prague from block 0 \
                 (set it to 0 or remove it)"
            )));
        }
    }
    let times = [
        ("shanghaiTime", config.shanghai_time),
        ("cancunTime", config.cancun_time),
        ("pragueTime", config.prague_time),
    ];
    for (name, time) in times {
        if let Some(time) = time.filter(|&t| t > genesis_timestamp) {
            return Err(GenesisError::Invalid(format!(
                "config.{name} is {time}, after the genesis timestamp {genesis_timestamp}: \
                 rtchain runs every fork through Prague from genesis (set it to 0 or remove it)"
            )));
        }
    }
    let later = [
        ("osakaTime", config.osaka_time),
        ("amsterdamTime", config.amsterdam_time),
        ("bpo1Time", config.bpo1_time),
    ];
    if let Some((name, time)) = later.into_iter().find_map(|(n, t)| t.map(|t| (n, t))) {
        return Err(GenesisError::Invalid(format!(
            "config.{name} is {time}: rtchain runs Prague and no later fork (remove it)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod fork_schedule_tests {
    use super::*;

    fn with_config(config: serde_json::Value) -> Result<Genesis, GenesisError> {
        let g: alloy_genesis::Genesis = serde_json::from_value(serde_json::json!({
            "config": config,
            "timestamp": "0x64",
            "gasLimit": "0x1c9c380",
            "alloc": {},
        }))
        .expect("parses");
        Genesis::from_alloy(g)
    }

    #[test]
    fn forks_at_genesis_or_unnamed_are_accepted() {
        with_config(serde_json::json!({"chainId": 7})).expect("no schedule");
        with_config(serde_json::json!({
            "chainId": 7, "londonBlock": 0, "shanghaiTime": 0, "cancunTime": 100, "pragueTime": 0,
        }))
        .expect("everything at genesis");
    }

    #[test]
    fn a_fork_after_genesis_or_past_prague_is_refused() {
        for (config, named) in [
            (
                serde_json::json!({"chainId": 7, "londonBlock": 5}),
                "config.londonBlock is 5",
            ),
            (
                serde_json::json!({"chainId": 7, "pragueTime": 101}),
                "config.pragueTime is 101",
            ),
            (
                serde_json::json!({"chainId": 7, "osakaTime": 0}),
                "config.osakaTime is 0",
            ),
        ] {
            match with_config(config) {
                Err(GenesisError::Invalid(why)) => assert!(why.contains(named), "{why}"),
                other => panic!("expected {named} refused, got {other:?}"),
            }
        }
    }
}
