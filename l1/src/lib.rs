//! Settlement to Ethereum L1: what makes rtchain a Layer 2.
//!
//! - [`contracts`]: alloy bindings over the Solidity contracts in `contracts/` (the L1's
//!   `ValidatorRegistry`, `OutputOracle`, `Portal`, `BatchInbox`; the L2 predeploys `L1Block`
//!   and `L2ToL1MessagePasser`), and [`deploy`]ing them.
//! - [`blob`] and [`channel`]: the batch format, compressed into channels and packed into
//!   EIP-4844 blobs.
//! - [`batcher`]: posts L2 blocks to the inbox; [`derive`]: reads them back.
//! - [`deposit`]: Portal events to OP deposit transactions (0x7E) and the L1-info deposit;
//!   [`watch`]: following L1 (origins, deposits, the L2's safe and finalized heads).
//! - [`output`] and [`proposer`]: output roots, validators' signatures, posting them;
//!   withdrawals' hashes and storage slots.
//! - [`anvil`]: a local L1 for the devnet, the tests and the benchmarks.
//!
//! This crate knows nothing of the node: the node implements [`batcher::BatchSource`], feeds
//! the [`proposer::OutputBook`] and reads the [`watch::L1View`]. Design and numbers:
//! `docs/l1.md`.

pub mod anvil;
pub mod batcher;
pub mod blob;
pub mod channel;
pub mod contracts;
pub mod deploy;
pub mod deposit;
pub mod derive;
pub mod output;
pub mod proposer;
pub mod watch;
