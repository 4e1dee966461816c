//! `rtchain bench`: load generators that measure a running node from the outside.
//!
//! Owns the client side of a benchmark: deriving and funding sender accounts, pre-signing the
//! load, sending it on a fixed schedule, timing the replies and reporting one JSON line per
//! target. Does not own any node: targets are reached over JSON-RPC exactly as a wallet would,
//! so one run can measure rtchain and anvil side by side with the same load. The one exception
//! is `--anvil`, which starts a throw-away anvil on a loopback port for such comparisons.
//!
//! `bench exec` is the other exception: it measures the executor in-process, on pre-signed
//! batches in memory, with no node at all; `bench history` reads a stopped node's data directory. `bench udp` and `bench reflect` start their node (or
//! port) in-process too: the DPDK backend needs a veth rig built first and EAL once per process.
//!
//! See `docs/benchmarking.md` for what each benchmark measures and how to read its output.

mod anvil;
mod chain;
pub mod consensus;
mod erc20;
pub mod error;
pub mod exec;
pub mod history;
pub mod l1;
pub mod reflect;
pub mod report;
pub mod rpc;
pub mod udp;

pub use consensus::{ConsensusBenchArgs, run_consensus_bench};
pub use exec::{ExecBenchArgs, run_exec_bench};
pub use history::{HistoryBenchArgs, run_history_bench};
pub use l1::{L1BenchArgs, run_l1_bench};
pub use reflect::{ReflectBenchArgs, run_reflect_bench};
pub use rpc::{RpcBenchArgs, run_rpc_bench};
pub use udp::{UdpBenchArgs, run_udp_bench};
