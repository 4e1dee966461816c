//! Packet I/O for rtchain. See `dataplane/README.md`.

pub mod doorbell;
pub mod dpdk;
pub mod numa;
mod open;
pub mod packet;
pub mod port;
pub mod rig;
pub mod ring;
pub mod socket;
pub mod tile;
pub mod uring;

pub use open::{Backend, PortConfig, open_port};
pub use port::{Datagram, DatagramPort, MAX_PAYLOAD, PollMode, PortError, PortStats, PortWaker};
