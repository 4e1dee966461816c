//! The running rtchain node: opens the data directory, replays the mini-block log, starts the
//! sequencer (alone, or driven by the replica as a validator or follower), the UDP fast path
//! and the JSON-RPC server, and stops them in order.
//!
//! Where to start reading (see README.md for the whole map):
//! - [`Node::start`]: how the parts are wired;
//! - [`outcome`] and [`admission`]: the one typed boundary both doors (JSON-RPC, UDP) adapt;
//! - [`sequencer`]: mini-blocks, the log, EVM blocks and the sealer;
//! - [`replica`]: BFT replication on the sequencer's thread.
//!
//! This crate names the execution, storage, consensus, RPC and dataplane crates; none of them
//! names it. Its core (sequencer, replica, chain) never names the RPC crate: only
//! `rpc_backend`, the JSON-RPC adapter, does.

pub mod admission;
pub mod catch_up;
pub mod chain;
pub mod cluster;
pub mod config;
pub mod derive;
pub mod devnet;
pub mod error;
pub mod fastpath;
pub mod keys;
pub mod l1_cli;
pub mod l1_tasks;
pub mod node;
pub mod outcome;
pub mod pool;
pub mod replica;
pub mod rpc_backend;
pub mod sequencer;
pub mod settlement;
pub mod transport;

pub use chain::Chain;
pub use config::NodeConfig;
pub use error::NodeError;
pub use node::Node;
pub use rpc_backend::NodeBackend;
