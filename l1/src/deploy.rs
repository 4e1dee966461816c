//! Deploying the settlement contracts, and the record of where they are (`l1.json` in a node's
//! data directory, so that a devnet on an existing L1 deploys once and finds them again).

use std::path::Path;

use alloy::{
    network::EthereumWallet,
    primitives::{Address, B256},
    providers::{Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
};

use crate::contracts::{BatchInbox, OutputOracle, Portal, ValidatorRegistry};

/// Where the contracts are on which L1.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deployment {
    pub l1_chain_id: u64,
    pub l2_chain_id: u64,
    /// An L1 block at which every contract exists: nothing of the L2 is older.
    pub deploy_block: u64,
    pub registry: Address,
    pub oracle: Address,
    pub portal: Address,
    pub inbox: Address,
    pub batcher: Address,
    pub guardian: Address,
    /// L2 blocks between output roots.
    pub submission_interval: u64,
    pub finalization_period_secs: u64,
}

/// What to deploy.
#[derive(Debug, Clone)]
pub struct DeployParams {
    pub l2_chain_id: u64,
    /// Owner of the registry and the inbox, and the oracle's and the Portal's guardian.
    pub admin: Address,
    pub batcher: Address,
    /// The validators' ed25519 consensus keys and secp256k1 settlement addresses, in order.
    pub consensus_keys: Vec<B256>,
    pub settlement_keys: Vec<Address>,
    /// L2 blocks per validator-set epoch.
    pub epoch_length: u64,
    pub submission_interval: u64,
    pub finalization_period_secs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("L1 at {url}: {why}")]
    L1 { url: String, why: String },
    #[error("deploying {what}: {why}")]
    Contract { what: &'static str, why: String },
    #[error("{path}: {why}")]
    File { path: String, why: String },
}

/// Deploys the registry, the oracle, the Portal and the inbox with `deployer` (which pays).
pub async fn deploy(
    l1_url: &str,
    deployer: PrivateKeySigner,
    params: &DeployParams,
) -> Result<Deployment, DeployError> {
    let l1 = |why: String| DeployError::L1 {
        url: l1_url.to_owned(),
        why,
    };
    let provider = ProviderBuilder::new()
        .wallet(EthereumWallet::from(deployer))
        .connect(l1_url)
        .await
        .map_err(|e| l1(e.to_string()))?;
    let l1_chain_id = provider
        .get_chain_id()
        .await
        .map_err(|e| l1(e.to_string()))?;
    let err = |what: &'static str| {
        move |e: alloy::contract::Error| DeployError::Contract {
            what,
            why: e.to_string(),
        }
    };
    let registry = ValidatorRegistry::deploy(
        &provider,
        params.admin,
        params.epoch_length,
        params.consensus_keys.clone(),
        params.settlement_keys.clone(),
    )
    .await
    .map_err(err("ValidatorRegistry"))?;
    let oracle = OutputOracle::deploy(
        &provider,
        *registry.address(),
        params.admin,
        params.submission_interval,
        params.finalization_period_secs,
        params.l2_chain_id,
        0,
    )
    .await
    .map_err(err("OutputOracle"))?;
    let portal = Portal::deploy(&provider, *oracle.address(), params.admin)
        .await
        .map_err(err("Portal"))?;
    // Block 0 is the genesis: the first batch covers block 1.
    let inbox = BatchInbox::deploy(&provider, params.admin, params.batcher, 1)
        .await
        .map_err(err("BatchInbox"))?;
    // Every contract exists from here on: nothing of the L2 is in an earlier L1 block.
    let deploy_block = provider
        .get_block_number()
        .await
        .map_err(|e| l1(e.to_string()))?;
    Ok(Deployment {
        l1_chain_id,
        l2_chain_id: params.l2_chain_id,
        deploy_block,
        registry: *registry.address(),
        oracle: *oracle.address(),
        portal: *portal.address(),
        inbox: *inbox.address(),
        batcher: params.batcher,
        guardian: params.admin,
        submission_interval: params.submission_interval,
        finalization_period_secs: params.finalization_period_secs,
    })
}

impl Deployment {
    pub fn load(path: &Path) -> Result<Self, DeployError> {
        let file = |why: String| DeployError::File {
            path: path.display().to_string(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| file(e.to_string()))
    }

    /// Writes the record durably (temporary file, fsync, rename, directory fsync).
    pub fn save(&self, path: &Path) -> Result<(), DeployError> {
        let file = |why: String| DeployError::File {
            path: path.display().to_string(),
            why,
        };
        let json = serde_json::to_string_pretty(self).map_err(|e| file(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(|e| file(e.to_string()))?;
            f.write_all(json.as_bytes())
                .map_err(|e| file(e.to_string()))?;
            f.sync_all().map_err(|e| file(e.to_string()))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| file(e.to_string()))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| file(e.to_string()))?;
        }
        Ok(())
    }
}
