//! Several validator processes on this machine: `rtchain devnet --validators N` and
//! `rtchain bench consensus`. Each validator is an ordinary `rtchain node --config FILE`
//! process with its own key, data directory, RPC port and log file.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rtchain_l1::deploy::Deployment;

use crate::{
    config::{ConsensusSync, NodeConfig, ValidatorEntry},
    keys,
};

/// What the validators share.
pub struct ClusterSpec {
    pub dir: PathBuf,
    pub validators: usize,
    /// Non-voting full nodes following the validators.
    pub followers: usize,
    /// With `genesis`, may be left out (the file names it); if set, must agree with it.
    pub chain_id: Option<u64>,
    pub genesis: Option<PathBuf>,
    pub block_interval_ms: u64,
    pub sync: ConsensusSync,
    /// First RPC port (validator i gets base + 10 i); 0: free ports.
    pub rpc_base_port: u16,
    /// First fast-path port (validator i gets base + 10 i), 0: free ports; `None`: no fast path.
    pub fastpath_base_port: Option<u16>,
    /// Each node in its own network namespace on a bridge (needs root): nodes get their own
    /// addresses and the default ports, and a node can be cut off by taking its link down.
    pub netns: bool,
    /// The L1 the cluster settles to, with its contracts deployed for these validators.
    pub l1: Option<ClusterL1>,
    /// State history each node keeps (`[storage] history_blocks` / `archive`).
    pub history: rtchain_state::HistoryMode,
}

/// A cluster's L1: every node reads it; validator `i` signs output roots with anvil's dev key
/// `2 + i`, validator 0 posts batches with dev key 1.
pub struct ClusterL1 {
    pub url: String,
    pub deployment: rtchain_l1::deploy::Deployment,
}

/// The directory of node `i` (validators first, then followers).
fn node_dir(spec: &ClusterSpec, i: usize) -> PathBuf {
    if i < spec.validators {
        spec.dir.join(format!("v{i}"))
    } else {
        spec.dir.join(format!("f{}", i - spec.validators))
    }
}

/// Writes (or reuses) each node's ed25519 key; returns each key's path and public key.
/// Keys are kept across runs in `dir/v{i}/validator.key`, so a cluster directory can be
/// restarted.
pub fn node_keys(
    spec: &ClusterSpec,
) -> Result<Vec<(PathBuf, ed25519_dalek::VerifyingKey)>, String> {
    let mut keys = Vec::new();
    for i in 0..spec.validators + spec.followers {
        let dir = node_dir(spec, i);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let key_path = dir.join("validator.key");
        let key = if key_path.exists() {
            crate::keys::load(&key_path).map_err(|e| e.to_string())?
        } else {
            crate::keys::generate(&key_path).map_err(|e| e.to_string())?
        };
        keys.push((key_path, key.verifying_key()));
    }
    Ok(keys)
}

/// The running nodes, and their namespaces when `netns` is set (removed after the nodes stop).
pub struct Cluster {
    pub nodes: Vec<Validator>,
    pub net: Option<rtchain_dataplane::rig::BridgeNet>,
}

/// One validator process.
pub struct Validator {
    pub index: usize,
    /// The namespace it runs in (`netns` clusters).
    pub netns: Option<String>,
    /// Its link on the bridge (`netns` clusters).
    pub link: Option<String>,
    pub config_path: PathBuf,
    pub config: NodeConfig,
    pub log_path: PathBuf,
    pub child: Option<Child>,
}

/// Ports chosen so far for port-0 clusters, held open until every port is chosen (a port
/// released at once could be handed out twice).
#[derive(Default)]
struct Held {
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

fn port(base: u16, i: usize, held: &mut Held, udp: bool) -> Result<u16, String> {
    if base != 0 {
        return u16::try_from(base as usize + 10 * i)
            .map_err(|_| format!("port {base} + {} is out of range", 10 * i));
    }
    let err = |e: std::io::Error| format!("cannot find a free port: {e}");
    if udp {
        let socket = UdpSocket::bind("127.0.0.1:0").map_err(err)?;
        let port = socket.local_addr().map_err(err)?.port();
        held.udp.push(socket);
        Ok(port)
    } else {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(err)?;
        let port = listener.local_addr().map_err(err)?.port();
        held.tcp.push(listener);
        Ok(port)
    }
}

/// Writes (or reuses) each validator's key and writes its config. Keys are kept across runs in
/// `dir/v{i}/validator.key`, so a cluster directory can be restarted.
pub fn prepare(spec: &ClusterSpec) -> Result<Cluster, String> {
    if spec.validators < 4 {
        return Err(format!(
            "--validators {}: BFT needs n = 3f+1 >= 4 validators",
            spec.validators
        ));
    }
    let total = spec.validators + spec.followers;
    let dir_of = |i: usize| node_dir(spec, i);
    let keys: Vec<(PathBuf, String)> = node_keys(spec)?
        .into_iter()
        .map(|(path, key)| (path, format!("0x{}", hex::encode(key.as_bytes()))))
        .collect();
    let consensus_base = if spec.rpc_base_port == 0 {
        0
    } else {
        spec.rpc_base_port.checked_add(4).ok_or_else(|| {
            format!(
                "--rpc-addr port {} is too high for a cluster",
                spec.rpc_base_port
            )
        })?
    };
    let net = if spec.netns {
        Some(
            rtchain_dataplane::rig::BridgeNet::create(total)
                .map_err(|e| format!("--netns: {e} (needs root and iproute2)"))?,
        )
    } else {
        None
    };
    // In namespaces every node has its own address: the same (default) ports everywhere.
    let ip = |i: usize| {
        net.as_ref()
            .map_or(Ipv4Addr::LOCALHOST, |net| net.hosts[i].ip)
    };
    let base = |b: u16, default: u16| if net.is_some() { (default, 0) } else { (b, 10) };
    let pick = |b: u16, default: u16, i: usize, held: &mut Held, udp: bool| {
        let (b, step) = base(b, default);
        if step == 0 {
            Ok(b)
        } else {
            port(b, i, held, udp)
        }
    };
    let mut held = Held::default();
    let mut entries = Vec::new();
    for (i, (_, public)) in keys.iter().enumerate() {
        entries.push(ValidatorEntry {
            key: public.clone(),
            addr: SocketAddrV4::new(ip(i), pick(consensus_base, 9100, i, &mut held, true)?),
        });
    }
    let mut out = Vec::new();
    let (validators, followers) = entries.split_at(spec.validators);
    for (i, (key_path, _)) in keys.into_iter().enumerate() {
        let dir = dir_of(i);
        let mut config = NodeConfig {
            data_dir: dir.join("data"),
            ..NodeConfig::default()
        };
        config.rpc.addr =
            SocketAddr::from((ip(i), pick(spec.rpc_base_port, 8545, i, &mut held, false)?));
        config.chain.chain_id = spec.chain_id;
        config.chain.genesis = spec.genesis.clone();
        config.rpc.dev_accounts = spec.genesis.is_none();
        config.sequencer.block_interval_ms = spec.block_interval_ms;
        config.sequencer.idle_block_interval_ms = config
            .sequencer
            .idle_block_interval_ms
            .max(spec.block_interval_ms);
        // Four processes share this machine's cores: one executor thread each.
        config.sequencer.exec_threads = 1;
        match spec.fastpath_base_port {
            Some(base) => {
                config.fastpath.listen =
                    SocketAddrV4::new(ip(i), pick(base, 8547, i, &mut held, true)?);
                config.fastpath.verify_tiles = 0;
            }
            None => config.fastpath.enabled = false,
        }
        if spec.sync == ConsensusSync::Off {
            config.storage.minilog_sync = rtchain_state::minilog::SyncMode::Off;
        }
        config.storage.set_history_mode(spec.history);
        config.consensus.validators = validators.to_vec();
        config.consensus.followers = followers.to_vec();
        config.consensus.key_file = Some(key_path);
        config.consensus.sync = spec.sync;
        if let Some(l1) = &spec.l1 {
            configure_l1(
                &mut config,
                &dir,
                &l1.url,
                &l1.deployment,
                i,
                spec.validators,
            )?;
        }
        config.validate()?;
        let config_path = dir.join("node.toml");
        let text = toml::to_string(&config).map_err(|e| format!("config: {e}"))?;
        std::fs::write(&config_path, text)
            .map_err(|e| format!("{}: {e}", config_path.display()))?;
        out.push(Validator {
            index: i,
            netns: net.as_ref().map(|n| n.hosts[i].ns.clone()),
            link: net.as_ref().map(|n| n.hosts[i].link.clone()),
            config_path,
            log_path: dir.join("node.log"),
            config,
            child: None,
        });
    }
    Ok(Cluster { nodes: out, net })
}

/// Prepares the validators, starts them all and waits until each serves RPC.
pub fn launch(spec: &ClusterSpec) -> Result<Cluster, String> {
    let mut cluster = prepare(spec)?;
    for v in &mut cluster.nodes {
        v.start()?;
    }
    for v in &mut cluster.nodes {
        v.wait_ready(Duration::from_secs(60))?;
    }
    Ok(cluster)
}

impl Validator {
    /// Starts `rtchain node --config` for this validator, its output appended to its log.
    pub fn start(&mut self) -> Result<(), String> {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find the rtchain binary: {e}"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("{}: {e}", self.log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = match &self.netns {
            Some(ns) => {
                // `ip netns exec` execs the node in place: the child's pid is the node's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let child = command
            .arg("node")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start validator {}: {e}", self.index))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until its RPC port accepts connections (or the process exits).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "validator {} exited at start ({status}); see {}",
                    self.index,
                    self.log_path.display()
                ));
            }
            if TcpStream::connect_timeout(&self.config.rpc.addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "validator {} did not serve RPC within {timeout:?}; see {}",
                    self.index,
                    self.log_path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait (SIGKILL after `grace`).
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Validator {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The data directory for a cluster: `dir` if given, else a temporary one (deleted on drop).
pub fn cluster_dir(dir: Option<PathBuf>) -> Result<(PathBuf, Option<tempfile::TempDir>), String> {
    match dir {
        Some(dir) => Ok((dir, None)),
        None => {
            let temp = tempfile::Builder::new()
                .prefix("rtchain-cluster-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            Ok((temp.path().to_owned(), Some(temp)))
        }
    }
}

/// Prints where each validator and follower serves.
pub fn print_validators(validators: &[Validator]) {
    for v in validators {
        let n = v.config.consensus.validators.len();
        let (role, number) = if v.index < n {
            ("Validator", v.index)
        } else {
            ("Follower", v.index - n)
        };
        let consensus = v
            .config
            .consensus
            .validators
            .iter()
            .chain(&v.config.consensus.followers)
            .nth(v.index)
            .map(|e| e.addr.to_string())
            .unwrap_or_default();
        let fast = if v.config.fastpath.enabled {
            format!("  fast path: udp://{}", v.config.fastpath.listen)
        } else {
            String::new()
        };
        let netns = match (&v.netns, &v.link) {
            (Some(ns), Some(link)) => format!("  netns {ns} link {link}"),
            _ => String::new(),
        };
        println!(
            "{role} {number}: RPC: http://{}{fast}  consensus: udp://{consensus}{netns}  pid {}  log {}",
            v.config.rpc.addr,
            v.child.as_ref().map_or(0, |c| c.id()),
            v.log_path.display()
        );
    }
}

/// `[l1]` for node `index` of a devnet whose directory is `dir`: the record copied into its
/// data directory, and its dev keys written beside its config (validator `index` signs, the
/// first one also posts batches; followers only read).
pub fn configure_l1(
    config: &mut NodeConfig,
    dir: &Path,
    url: &str,
    deployment: &Deployment,
    index: usize,
    validators: usize,
) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
    deployment
        .save(&config.data_dir.join("l1.json"))
        .map_err(|e| e.to_string())?;
    config.l1.url = Some(url.to_owned());
    config.l1.deployment = PathBuf::from("l1.json");
    let write_key = |name: &str, key: u32| -> Result<PathBuf, String> {
        let path = dir.join(name);
        if !path.exists() {
            let secret: [u8; 32] = keys::dev_key(key).to_bytes().into();
            keys::write_secret(&path, &secret).map_err(|e| e.to_string())?;
        }
        Ok(path)
    };
    if index < validators {
        config.l1.settlement_key_file = Some(write_key(
            "settlement.key",
            keys::DEV_SETTLEMENT_KEY_FIRST + index as u32,
        )?);
        if index == 0 {
            config.l1.batcher.key_file = Some(write_key("batcher.key", keys::DEV_BATCHER_KEY)?);
        }
    }
    Ok(())
}
