//! Opening a port of the configured backend.

use crate::{DatagramPort, PollMode, PortError, dpdk, socket, uring};

use std::net::SocketAddrV4;

/// Which backend moves the packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Dpdk,
    Socket,
    IoUring,
}

/// What [`open_port`] needs.
#[derive(Debug, Clone)]
pub struct PortConfig {
    pub backend: Backend,
    pub listen: SocketAddrV4,
    pub reflector_port: Option<u16>,
    pub poll: PollMode,
    /// io_uring only: kernel-side submission polling.
    pub sqpoll: bool,
    pub dpdk: dpdk::DpdkConfig,
}

/// Opens one port (one queue pair) of the configured backend. With DPDK this starts EAL, so it
/// runs once per process, on the thread that will poll the port.
pub fn open_port(config: &PortConfig) -> Result<Box<dyn DatagramPort>, PortError> {
    let socket_config = socket::SocketPortConfig {
        listen: config.listen,
        reflector_port: config.reflector_port,
        poll: config.poll,
        burst: 32,
    };
    Ok(match config.backend {
        Backend::Socket => Box::new(socket::SocketPort::bind(&socket_config)?),
        Backend::IoUring => Box::new(uring::UringPort::bind(&uring::UringPortConfig {
            socket: socket_config,
            sqpoll: config.sqpoll,
        })?),
        Backend::Dpdk => {
            if config.dpdk.queues != 1 {
                return Err(PortError::Config(
                    "the node runs one net tile: set dpdk.queues = 1 (RSS over several queues is available to library users through dpdk::DpdkDevice)".into(),
                ));
            }
            let eal = dpdk::Eal::init(&config.dpdk)?;
            let device = dpdk::DpdkDevice::open(&eal, &config.dpdk)?;
            let mut queue = dpdk::DeviceQueue::new(
                device,
                0,
                config.listen,
                config.reflector_port,
                &config.dpdk.static_arp,
            )?;
            queue.set_poll(config.poll);
            Box::new(queue)
        }
    })
}
