//! A local anvil as the L1: the project's pinned one (`node_modules`, from `npm ci`), started on
//! a loopback port and killed when dropped. The devnet, the tests and the benchmarks all start
//! their L1 here.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long anvil gets to answer after it is spawned (about 0.1 s on an idle machine; the
/// margin is for one busy compiling).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The chain id of the devnet's L1 (the L2 keeps anvil's 31337, so that tools configured for
/// anvil work against the L2 unchanged).
pub const DEVNET_L1_CHAIN_ID: u64 = 900;

/// How to run anvil.
#[derive(Debug, Clone)]
pub struct AnvilOptions {
    pub chain_id: u64,
    /// 0: a free port.
    pub port: u16,
    /// Seconds between blocks; `None`: a block per transaction (automine).
    pub block_time_secs: Option<u64>,
    /// safe = latest - N, finalized = latest - 2N.
    pub slots_in_an_epoch: u64,
    /// Persist blocks, receipts and blobs here across restarts.
    pub state_file: Option<PathBuf>,
    /// Where anvil's output goes (`None`: discarded).
    pub log_file: Option<PathBuf>,
}

impl Default for AnvilOptions {
    fn default() -> Self {
        Self {
            chain_id: DEVNET_L1_CHAIN_ID,
            port: 0,
            block_time_secs: Some(1),
            slots_in_an_epoch: 2,
            state_file: None,
            log_file: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnvilError {
    #[error(
        "anvil not found (looked for $RTCHAIN_ANVIL, {0}, and anvil on PATH); run `make setup` (npm ci) or pass --l1 URL"
    )]
    Missing(String),
    #[error("cannot start anvil: {0}")]
    Spawn(std::io::Error),
    #[error("anvil exited during startup ({0}); see {1}")]
    Exited(String, String),
    #[error("anvil did not answer on {0} within {STARTUP_TIMEOUT:?}")]
    Timeout(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A running anvil; dropping it kills it.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    pub url: String,
    pub port: u16,
    pub chain_id: u64,
}

/// The anvil binary: `$RTCHAIN_ANVIL`, the project's `node_modules`, or `anvil` on PATH.
pub fn binary() -> Result<PathBuf, AnvilError> {
    if let Ok(path) = std::env::var("RTCHAIN_ANVIL") {
        return Ok(PathBuf::from(path));
    }
    let pinned = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    if pinned.is_file() {
        return Ok(pinned);
    }
    let local = Path::new("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    if local.is_file() {
        return Ok(local.to_owned());
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("anvil"))
            .find(|p| p.is_file())
    }) {
        return Ok(found);
    }
    Err(AnvilError::Missing(pinned.display().to_string()))
}

impl Anvil {
    /// Starts anvil (prague rules, blobs up to the request size anvil allows) and waits until
    /// it answers.
    pub fn start(options: &AnvilOptions) -> Result<Self, AnvilError> {
        let bin = binary()?;
        let port = match options.port {
            0 => free_port()?,
            p => p,
        };
        let mut command = Command::new(&bin);
        command
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--chain-id", &options.chain_id.to_string()])
            .args(["--hardfork", "prague"])
            // Batches of several blobs exceed the default 2 MB request limit.
            .arg("--no-request-size-limit")
            .args([
                "--slots-in-an-epoch",
                &options.slots_in_an_epoch.to_string(),
            ]);
        if let Some(secs) = options.block_time_secs {
            command.args(["--block-time", &secs.to_string()]);
        }
        if let Some(state) = &options.state_file {
            command.arg("--state").arg(state);
        }
        let (stdout, stderr) = match &options.log_file {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(AnvilError::Spawn)?;
        let url = format!("http://127.0.0.1:{port}");
        let mut anvil = Self {
            child,
            url,
            port,
            chain_id: options.chain_id,
        };
        let log = options
            .log_file
            .as_ref()
            .map_or("its output (no log file)".into(), |p| {
                p.display().to_string()
            });
        anvil.wait_ready(&log)?;
        Ok(anvil)
    }

    fn wait_ready(&mut self, log: &str) -> Result<(), AnvilError> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(AnvilError::Exited(status.to_string(), log.to_owned()));
            }
            if chain_id(self.port).is_some_and(|id| id == self.chain_id) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(AnvilError::Timeout(self.url.clone()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id (tests stop and restart it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        // Errors mean it already exited; there is nothing left to clean up either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `eth_chainId` over a bare HTTP request (no runtime needed while waiting for start-up).
fn chain_id(port: u16) -> Option<u64> {
    let mut stream = TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(200),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
    let request = format!(
        "POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let json = response.split("\r\n\r\n").nth(1)?;
    let value: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
    let hex = value["result"].as_str()?;
    u64::from_str_radix(hex.trim_start_matches("0x"), 16).ok()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16, AnvilError> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}
