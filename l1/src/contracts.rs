//! alloy bindings over the compiled contracts in `contracts/out/` (solc-js, pinned; the
//! artifacts are committed and re-checked in CI by `scripts/compile-contracts.mjs --check`).
//!
//! On L1: [`ValidatorRegistry`], [`OutputOracle`], [`Portal`], [`BatchInbox`]. On L2, as
//! predeploys in the genesis: [`L1Block`] and [`L2ToL1MessagePasser`].

#![allow(clippy::too_many_arguments)]

use alloy::primitives::{Address, Bytes, address};

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    ValidatorRegistry,
    "contracts/out/ValidatorRegistry.json"
);
alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    OutputOracle,
    "contracts/out/OutputOracle.json"
);
alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    Portal,
    "contracts/out/Portal.json"
);
alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    BatchInbox,
    "contracts/out/BatchInbox.json"
);
alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    L1Block,
    "contracts/out/L1Block.json"
);
alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug)]
    L2ToL1MessagePasser,
    "contracts/out/L2ToL1MessagePasser.json"
);

/// The L2 predeploy that records the L1 origin (OP's address).
pub const L1_BLOCK_ADDRESS: Address = address!("0x4200000000000000000000000000000000000015");
/// The L2 predeploy withdrawals are initiated through (OP's address); its storage root is part
/// of every output root.
pub const MESSAGE_PASSER_ADDRESS: Address = address!("0x4200000000000000000000000000000000000016");
/// The system account that sends the L1-info deposit of each L1 origin (OP's).
pub const DEPOSITOR_ACCOUNT: Address = address!("0xDeaDDEaDDeAdDeAdDEAdDEaddeAddEAdDEAd0001");

/// The L2 predeploys' runtime code, for the genesis.
pub fn predeploys() -> [(Address, Bytes); 2] {
    [
        (L1_BLOCK_ADDRESS, L1Block::DEPLOYED_BYTECODE.clone()),
        (
            MESSAGE_PASSER_ADDRESS,
            L2ToL1MessagePasser::DEPLOYED_BYTECODE.clone(),
        ),
    ]
}
