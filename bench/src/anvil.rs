//! A throw-away anvil for `--anvil`: started on a free loopback port, killed when dropped.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::chain::Node;
use super::error::BenchError;

/// How long anvil gets to answer `eth_chainId` after it is spawned. It is usually up in well
/// under a second; the margin is for a machine busy compiling.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const STARTUP_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The chain id anvil is started with, and that its devnet accounts are funded on.
pub(crate) const ANVIL_CHAIN_ID: u64 = 31337;

/// A running anvil. `kill_on_drop` makes sure it dies with the benchmark even on an error path;
/// [`Anvil::stop`] kills and reaps it explicitly.
#[derive(Debug)]
pub(crate) struct Anvil {
    child: Child,
    pub url: String,
}

impl Anvil {
    /// Starts `bin` with automine on (the default: one block per transaction, as soon as it
    /// arrives, so anvil's latency is its execution plus RPC cost) and waits until it answers.
    pub async fn start(bin: &Path) -> Result<Self, BenchError> {
        if !bin.is_file() {
            return Err(BenchError::AnvilMissing {
                path: bin.to_owned(),
            });
        }
        let port = free_loopback_port()?;
        let url = format!("http://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--chain-id",
                &ANVIL_CHAIN_ID.to_string(),
                "--hardfork",
                "prague",
            ])
            // Anvil logs every request and block to stdout; at thousands of transactions per
            // second that logging costs it CPU the benchmark would then attribute to anvil.
            .arg("--quiet")
            // Automine makes a block, and so a state snapshot, per transaction; by default anvil
            // keeps every snapshot (in memory, then on disk). Keeping only recent ones bounds its
            // memory and disk use over a long run; the benchmark reads only the latest state.
            .arg("--prune-history")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Anvil(format!("cannot start {}: {e}", bin.display())))?;
        let mut anvil = Self { child, url };
        anvil.wait_ready().await?;
        Ok(anvil)
    }

    async fn wait_ready(&mut self) -> Result<(), BenchError> {
        let node = Node::connect(&self.url, 1, STARTUP_POLL_INTERVAL * 10)?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|e| BenchError::Anvil(e.to_string()))?
            {
                return Err(BenchError::Anvil(format!(
                    "exited during startup with {status}"
                )));
            }
            match node.chain_id().await {
                Ok(ANVIL_CHAIN_ID) => return Ok(()),
                Ok(other) => {
                    return Err(BenchError::Anvil(format!(
                        "{} answers with chain id {other}, expected {ANVIL_CHAIN_ID}: another \
                         process took the port",
                        self.url
                    )));
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(BenchError::Anvil(format!(
                        "not ready on {} after {STARTUP_TIMEOUT:?}: {e}",
                        self.url
                    )));
                }
                Err(_) => tokio::time::sleep(STARTUP_POLL_INTERVAL).await,
            }
        }
    }

    pub async fn stop(mut self) {
        // Errors mean it already exited; there is nothing left to clean up either way.
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A port that was free a moment ago. Another process may take it before anvil binds it; then
/// anvil fails to start or the chain id check in [`Anvil::wait_ready`] notices.
fn free_loopback_port() -> Result<u16, BenchError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| BenchError::Anvil(format!("cannot find a free loopback port: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| BenchError::Anvil(format!("cannot find a free loopback port: {e}")))?
        .port();
    Ok(port)
}
