//! Real clients against a devnet: the viem script (tests/js/client.mjs) and the web3.py script
//! (tests/python/client.py), each deploying the ERC-20, sending ETH and tokens, reading events
//! and checking revert reasons. Each runs as a child process with RPC_URL set; its output is
//! printed when it fails.
//!
//! Without node_modules (viem) or .venv (web3.py) a test is skipped with a message, unless the
//! environment variable CI is set: in CI a missing tool is a failure (scripts/setup.sh installs
//! them).

mod common;

use std::{
    io::Read,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Devnet, repo_root};

/// Each script takes a few seconds; a hung one fails the test instead of hanging it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn viem_client_works_against_devnet() {
    let root = repo_root();
    if !tools_present(
        "viem",
        &[root.join("node_modules/viem/package.json")],
        "node",
    ) {
        return;
    }
    run_client(
        "viem",
        Command::new("node").arg(root.join("tests/js/client.mjs")),
    );
}

#[test]
fn web3py_client_works_against_devnet() {
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    if !tools_present(
        "web3.py",
        std::slice::from_ref(&python),
        python.to_str().unwrap_or_default(),
    ) {
        return;
    }
    run_client(
        "web3.py",
        Command::new(&python).arg(root.join("tests/python/client.py")),
    );
}

/// Whether `paths` exist and `program --version` runs. Missing tools skip the test with a
/// message, or fail it when CI is set.
fn tools_present(client: &str, paths: &[PathBuf], program: &str) -> bool {
    let missing: Vec<String> = paths
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    let runs = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if missing.is_empty() && runs {
        return true;
    }
    let what = if runs {
        format!("missing {}", missing.join(", "))
    } else {
        format!("`{program} --version` does not run")
    };
    if std::env::var_os("CI").is_some() {
        panic!(
            "{client} client test: {what} (CI is set, so this is a failure; run scripts/setup.sh)"
        );
    }
    eprintln!(
        "SKIPPED {client} client test: {what}; run scripts/setup.sh to install it (with CI set this fails)"
    );
    false
}

/// Kills the child on drop, so that a failing test leaves no process behind.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn run_client(client: &str, command: &mut Command) {
    let node = Devnet::start(&[]);
    let started = Instant::now();
    let child = command
        .current_dir(repo_root())
        .env("RPC_URL", node.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn the {client} client: {e}"));
    let mut child = ChildGuard(child);
    let stdout = drain(child.0.stdout.take().expect("stdout"));
    let stderr = drain(child.0.stderr.take().expect("stderr"));
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for the client") {
            break Some(status);
        }
        if started.elapsed() > CLIENT_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(child);
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let report = format!("--- {client} stdout ---\n{stdout}--- {client} stderr ---\n{stderr}");
    match status {
        Some(status) if status.success() => {
            println!(
                "{client} client passed in {:.1} s\n{report}",
                started.elapsed().as_secs_f64()
            );
        }
        Some(status) => panic!(
            "{client} client failed ({status}) against {}\n{report}",
            node.url()
        ),
        None => panic!("{client} client did not finish within {CLIENT_TIMEOUT:?}\n{report}"),
    }
}

/// Reads a pipe to its end on a thread (a full pipe would block the child).
fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
