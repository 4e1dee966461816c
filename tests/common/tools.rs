//! External tools (forge, cast, node, python) run from tests: presence checks and captured runs.

use std::{
    io::Read,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// Whether `paths` exist and each of `programs` runs `--version`. Missing tools skip the test
/// named `what_test` with a message, or fail it when CI is set.
pub fn tools_present(what_test: &str, paths: &[PathBuf], programs: &[&str]) -> bool {
    let mut missing: Vec<String> = paths
        .iter()
        .filter(|p| !p.exists())
        .map(|p| format!("missing {}", p.display()))
        .collect();
    for program in programs {
        let runs = Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !runs {
            missing.push(format!("`{program} --version` does not run"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let what = missing.join("; ");
    if std::env::var_os("CI").is_some() {
        panic!("{what_test}: {what} (CI is set, so this is a failure; run scripts/setup.sh)");
    }
    eprintln!(
        "SKIPPED {what_test}: {what}; run scripts/setup.sh to install it (with CI set this fails)"
    );
    false
}

/// Kills the child on drop, so that a failing test leaves no process behind.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What a tool run printed and how it ended (`status` is `None`: killed at its timeout).
pub struct Captured {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub report: String,
    pub secs: f64,
}

/// Runs `command` (its working directory already set) with piped output, killing it after
/// `timeout`.
pub fn run_captured(tool: &str, command: &mut Command, timeout: Duration) -> Captured {
    let started = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {tool}: {e}"));
    let mut child = ChildGuard(child);
    let stdout = drain(child.0.stdout.take().expect("stdout"));
    let stderr = drain(child.0.stderr.take().expect("stderr"));
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait for the child") {
            break Some(status);
        }
        if started.elapsed() > timeout {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(child);
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let report = format!("--- {tool} stdout ---\n{stdout}--- {tool} stderr ---\n{stderr}");
    Captured {
        status,
        stdout,
        report,
        secs: started.elapsed().as_secs_f64(),
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
