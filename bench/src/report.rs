//! One benchmark result per target, printed as a JSON line and optionally appended to a file.
//!
//! The line is self-describing (machine, commit, time, arguments) so files of results from
//! different runs and machines can be concatenated and compared without side notes.

use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::error::BenchError;

/// The machine a result was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub hostname: String,
    pub nproc: usize,
}

impl Machine {
    pub fn current() -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".to_owned());
        let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { hostname, nproc }
    }
}

/// The result of one `bench rpc` run against one target. Latencies are in microseconds from each
/// transaction's scheduled send time to its receipt, over successful transactions only; they
/// are `null` when no transaction succeeded.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub bench: &'static str,
    pub target: String,
    /// `web3_clientVersion` of the target, "unknown" when it does not answer it.
    pub client: String,
    pub label: String,
    pub mode: &'static str,
    pub workload: &'static str,
    /// Target send rate, transactions per second.
    pub rate: u32,
    pub duration_s: u64,
    pub senders: u32,
    pub concurrency: usize,
    /// Transactions handed to the node (all of the schedule, unless it was cut short).
    pub sent: u64,
    /// Successful receipts.
    pub received: u64,
    /// Failed sends, failed (reverted) receipts and timeouts.
    pub errors: u64,
    /// The first error's message, to tell a misconfiguration from an overloaded node.
    pub first_error: Option<String>,
    /// Successful receipts per second from the first scheduled send to the last receipt.
    pub achieved_tps: f64,
    pub p50_us: Option<u64>,
    pub p90_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    pub max_us: Option<u64>,
    pub mean_us: Option<f64>,
    /// How late the generator itself sent, after the due time (timer slack, a full concurrency
    /// bound, a starved CPU). Already included in the latencies; large values mean the
    /// generator, not only the node, was short of capacity.
    pub send_lag_p99_us: u64,
    pub send_lag_max_us: u64,
    /// `eth_getTransactionReceipt` calls in poll mode (0 in sync mode): the read load polling
    /// added on top of the transactions.
    pub receipt_polls: u64,
    pub machine: Machine,
    pub commit: String,
    /// UTC, RFC 3339, when the timed phase ended.
    pub timestamp: String,
}

impl BenchResult {
    /// Prints the result as one JSON line on stdout and appends the same line to `out`.
    pub fn emit(&self, out: Option<&Path>) -> Result<(), BenchError> {
        emit_line(self, out)
    }
}

/// Prints `result` as one JSON line on stdout and appends the same line to `out`.
pub fn emit_line<T: Serialize>(result: &T, out: Option<&Path>) -> Result<(), BenchError> {
    let line = serde_json::to_string(result)
        .map_err(|e| BenchError::Task("report", format!("cannot serialise the result: {e}")))?;
    println!("{line}");
    if let Some(path) = out {
        let io_error = |source| BenchError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_error)?;
        // One write per line, so concurrent runs appending to the same file do not
        // interleave within a line.
        file.write_all(format!("{line}\n").as_bytes())
            .map_err(io_error)?;
    }
    Ok(())
}

/// `git rev-parse HEAD` of the working directory, or "unknown" outside a checkout or without git.
pub fn current_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The current time as RFC 3339 UTC with seconds, e.g. `2026-05-10T23:30:00Z`.
pub fn utc_timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339_utc(secs)
}

fn rfc3339_utc(unix_s: u64) -> String {
    let days = unix_s / 86_400;
    let rem = unix_s % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`, for
/// non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_778_457_600 + 3_723), "2026-05-11T01:02:03Z");
    }
}
