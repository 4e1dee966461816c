//! BFT replication for rtchain: a Simplex-family protocol among n = 3f+1 validators.
//!
//! This crate owns:
//! - [`engine`]: the protocol as a pure state machine ([`Engine`]): [`Event`]s in, [`Effect`]s
//!   out (persist, send, deliver, verify, propose, schedule a timer). No I/O, clock or threads.
//! - [`votelog`]: the vote log that makes every vote durable before it is sent, so a restarted
//!   validator never signs a conflicting vote.
//! - [`types`] and [`crypto`]: blocks, votes, certificates, messages and their encoding;
//!   ed25519 signing and (batch) verification.
//!
//! It does not own: the transport (UDP through the dataplane), executing blocks (the
//! application answers [`Effect::Verify`] and [`Effect::Propose`]), storing finalized blocks
//! (the application commits each [`Effect::Deliver`]), or catch-up beyond fetching recent
//! blocks from peers. It depends on no other rtchain crate, on no async runtime and no storage
//! engine. The deterministic simulator that checks it lives in `tests/sim`.
//!
//! Start-up: [`votelog::VoteLog::open`] replays the log; [`Engine::new`] takes the replay and
//! the application's last committed block; [`Engine::restore_block`] takes back each block the
//! application stored (see [`Effect::Verify`]); [`Engine::start`].
//!
//! A driver loop, for one engine step:
//! 1. feed the event to [`Engine::handle`];
//! 2. append every [`Effect::Persist`] (they come first) to the [`votelog::VoteLog`];
//! 3. [`votelog::VoteLog::sync`] once;
//! 4. perform the remaining effects in order.

pub mod codec;
pub mod crypto;
pub mod engine;
pub mod types;
pub mod votelog;

pub use codec::DecodeError;
pub use crypto::{Validators, signing_key_from_seed};
pub use engine::{
    Anchor, Config, Effect, Engine, Event, Finalized, LeaderRule, Replay, Stats, Target,
    round_robin,
};
pub use types::{
    Block, Certificate, Digest, Height, Msg, Proposal, Proposed, Record, SignedVote,
    ValidatorIndex, View, Vote,
};
pub use votelog::{FileStorage, MemStorage, Storage, SyncMode, VoteLog, VoteLogConfig};
