//! A veth test rig: a network namespace holding one end of a veth pair, the other end in ours
//! for a DPDK vdev (`net_af_xdp`, `net_af_packet`) or a kernel socket to bind. Used by the
//! integration tests and by `rtchain bench udp|reflect`; needs root (CAP_NET_ADMIN).
//!
//! Everything it creates is removed on drop, and names carry the creating process's pid so that
//! parallel test processes never collide. A namespace left behind by a killed process is
//! removed by the next rig with the same pid, or by hand (`ip netns del rtc<pid>...`).

use std::{
    net::Ipv4Addr,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

static NEXT: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, thiserror::Error)]
pub enum RigError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `ip`: {0} (install iproute2 with scripts/setup.sh)")]
    Spawn(std::io::Error),
    #[error("cannot enter namespace {ns}: {source}")]
    Setns { ns: String, source: std::io::Error },
}

/// A namespace with one veth end (`ns_if`, address `ns_ip`) and the other end (`host_if`,
/// address `host_ip`, unless the rig is for DPDK, which owns the host end without an address).
pub struct VethRig {
    pub ns: String,
    pub host_if: String,
    pub ns_if: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
    pub host_mac: String,
}

fn run(args: &[&str]) -> Result<String, RigError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(RigError::Spawn)?;
    if !out.status.success() {
        return Err(RigError::Command {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Gives `interface` (inside `ns`) the address `ip/24` and brings it and loopback up.
fn bring_up_in_namespace(ns: &str, interface: &str, ip: Ipv4Addr) -> Result<(), RigError> {
    run(&[
        "ip",
        "-n",
        ns,
        "addr",
        "add",
        &format!("{ip}/24"),
        "dev",
        interface,
    ])?;
    run(&["ip", "-n", ns, "link", "set", interface, "up"])?;
    run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    Ok(())
}

impl VethRig {
    /// Creates the namespace and the veth pair. With `host_address`, the host end gets
    /// `host_ip/24` (for kernel sockets); without, it stays address-less for a DPDK vdev. Both
    /// ends get TX checksum offload turned off: veth would otherwise hand on partial checksums
    /// that a reflected frame carries back to a kernel that then drops it.
    pub fn create(host_address: bool) -> Result<Self, RigError> {
        let seq = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}x{seq}", std::process::id() % 100_000);
        let ns = format!("rtc{id}");
        let host_if = format!("rth{id}");
        let ns_if = format!("rtn{id}");
        let subnet = 100 + (std::process::id() % 100) as u8;
        // The pid picks the second octet and this process's sequence the third: rigs of one
        // process never share a /24; two processes collide only if their pids agree mod 100,
        // which matters only for rigs with a host address (routes on the host side).
        let third = (seq % 250) as u8 + 1;
        let host_ip = Ipv4Addr::new(10, subnet, third, 1);
        let ns_ip = Ipv4Addr::new(10, subnet, third, 2);
        // Leftovers of a killed process with our pid.
        let _ = run(&["ip", "netns", "del", &ns]);
        let _ = run(&["ip", "link", "del", &host_if]);
        run(&["ip", "netns", "add", &ns])?;
        let mut rig = Self {
            ns,
            host_if,
            ns_if,
            host_ip,
            ns_ip,
            host_mac: String::new(),
        };
        let (ns, host_if, ns_if) = (rig.ns.clone(), rig.host_if.clone(), rig.ns_if.clone());
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &ns,
        ])?;
        if host_address {
            run(&[
                "ip",
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                &host_if,
            ])?;
        }
        run(&["ip", "link", "set", &host_if, "up"])?;
        run(&["ethtool", "-K", &host_if, "tx", "off"])?;
        bring_up_in_namespace(&ns, &ns_if, ns_ip)?;
        run(&[
            "ip", "netns", "exec", &ns, "ethtool", "-K", &ns_if, "tx", "off",
        ])?;
        let mac =
            std::fs::read_to_string(format!("/sys/class/net/{host_if}/address")).map_err(|e| {
                RigError::Command {
                    command: format!("read {host_if} address"),
                    stderr: e.to_string(),
                }
            })?;
        rig.host_mac = mac.trim().to_string();
        Ok(rig)
    }

    /// A static neighbour entry in the namespace for `ip` at the host end's MAC (for peers that
    /// do not answer ARP, such as testpmd).
    pub fn static_neighbour(&self, ip: Ipv4Addr) -> Result<(), RigError> {
        run(&[
            "ip",
            "-n",
            &self.ns,
            "neigh",
            "replace",
            &ip.to_string(),
            "lladdr",
            &self.host_mac,
            "dev",
            &self.ns_if,
        ])
        .map(|_| ())
    }

    /// Removes any XDP program left on the host end (a DPDK `net_af_xdp` port that did not
    /// detach, or one killed before it could), so that the next one can attach.
    pub fn detach_xdp(&self) -> Result<(), RigError> {
        run(&["ip", "link", "set", "dev", &self.host_if, "xdp", "off"]).map(|_| ())
    }

    /// Runs `f` on a new thread that has entered the namespace: sockets it creates live there
    /// (and stay there when handed to other threads).
    pub fn in_namespace<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, RigError> {
        let path = format!("/run/netns/{}", self.ns);
        let ns = self.ns.clone();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).map_err(|source| RigError::Setns {
                ns: ns.clone(),
                source,
            })?;
            // SAFETY: setns on this thread with a namespace fd we hold open; it affects only the
            // calling thread, which is ours alone.
            let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if ret != 0 {
                return Err(RigError::Setns {
                    ns,
                    source: std::io::Error::last_os_error(),
                });
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(RigError::Command {
                command: "namespace thread".into(),
                stderr: "panicked".into(),
            })
        })
    }
}

impl Drop for VethRig {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it the pair.
        let _ = run(&["ip", "netns", "del", &self.ns]);
        let _ = run(&["ip", "link", "del", &self.host_if]);
    }
}

/// A LAN of namespaces: one bridge in our namespace (with an address, so this process reaches
/// every host) and, per host, a namespace joined to the bridge by a veth pair. Used to run each
/// node of a cluster in its own namespace and to cut one off by taking its link down. Removed
/// on drop; names carry the pid, like [`VethRig`]'s.
pub struct BridgeNet {
    pub bridge: String,
    pub bridge_ip: Ipv4Addr,
    pub hosts: Vec<BridgeHost>,
}

pub struct BridgeHost {
    pub ns: String,
    /// Our end of its veth, on the bridge: down cuts the host off.
    pub link: String,
    pub ip: Ipv4Addr,
}

impl BridgeNet {
    pub fn create(hosts: usize) -> Result<Self, RigError> {
        if hosts == 0 || hosts > 200 {
            return Err(RigError::Command {
                command: "bridge net".into(),
                stderr: format!("{hosts} hosts: between 1 and 200"),
            });
        }
        let seq = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}x{seq}", std::process::id() % 100_000);
        // 10.200-249.x.0/24: apart from VethRig's 10.100-199 range.
        let second = 200 + (std::process::id() % 50) as u8;
        let third = (seq % 250) as u8 + 1;
        let mut net = Self {
            bridge: format!("rtb{id}"),
            bridge_ip: Ipv4Addr::new(10, second, third, 254),
            hosts: Vec::new(),
        };
        let _ = run(&["ip", "link", "del", &net.bridge]);
        run(&["ip", "link", "add", &net.bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.bridge_ip),
            "dev",
            &net.bridge,
        ])?;
        run(&["ip", "link", "set", &net.bridge, "up"])?;
        for i in 0..hosts {
            let host = BridgeHost {
                ns: format!("rtc{id}h{i}"),
                link: format!("rbl{id}h{i}"),
                ip: Ipv4Addr::new(10, second, third, i as u8 + 1),
            };
            let inner = format!("rbi{id}h{i}");
            let _ = run(&["ip", "netns", "del", &host.ns]);
            let _ = run(&["ip", "link", "del", &host.link]);
            run(&["ip", "netns", "add", &host.ns])?;
            // Pushed before the links exist, so that drop removes whatever was made.
            let (ns, link, ip) = (host.ns.clone(), host.link.clone(), host.ip);
            net.hosts.push(host);
            run(&[
                "ip", "link", "add", &link, "type", "veth", "peer", "name", &inner, "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &link, "master", &net.bridge])?;
            run(&["ip", "link", "set", &link, "up"])?;
            bring_up_in_namespace(&ns, &inner, ip)?;
        }
        Ok(net)
    }

    /// Takes host `i`'s link down (cut off from everyone) or up again.
    pub fn set_link(&self, i: usize, up: bool) -> Result<(), RigError> {
        let host = self.hosts.get(i).ok_or_else(|| RigError::Command {
            command: "set_link".into(),
            stderr: format!("no host {i}"),
        })?;
        run(&[
            "ip",
            "link",
            "set",
            &host.link,
            if up { "up" } else { "down" },
        ])
        .map(|_| ())
    }
}

impl Drop for BridgeNet {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = run(&["ip", "netns", "del", &host.ns]);
            let _ = run(&["ip", "link", "del", &host.link]);
        }
        let _ = run(&["ip", "link", "del", &self.bridge]);
    }
}
