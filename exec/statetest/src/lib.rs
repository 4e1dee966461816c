//! `rtchain statetest`: runs ethereum/tests GeneralStateTests fixtures through rtchain-exec's
//! executor (not revm's own runner) and checks, for every (fork, data, gas, value) case of
//! Cancun and later forks, the post-state root and the logs hash the fixture expects.
//!
//! Each case executes with [`execute_tx_env`]: an [`rtchain_exec::Overlay`] over the fixture's
//! pre-state (a [`FixtureState`], this module's [`StateReader`]), the chain's revm
//! configuration from [`ExecConfig::cfg_env`], and the block environment of
//! [`BlockContext::block_env`]. The resulting [`StateDiff`] is applied on top of the pre-state
//! and the state trie root computed with alloy-trie, as a node would commit it; so a pass means
//! the Overlay's commit rules (EIP-161 removal of touched empty accounts, storage wipes of
//! created or destroyed accounts) give mainnet's state, not only that revm executes correctly.
//!
//! What is run and what is skipped, with reasons, is in docs/conformance.md.

use std::{
    collections::{BTreeMap, HashMap},
    fmt, fs,
    io::{self, Write},
    num::NonZeroUsize,
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use alloy_primitives::{Address, B256, Log, U256, keccak256};
use alloy_trie::{
    TrieAccount,
    root::{state_root_unsorted, storage_root_unhashed},
};
use rayon::prelude::*;
use revm_statetest_types::{SpecName, Test, TestSuite, TestUnit};
use rtchain_exec::{
    BlockContext, ExecConfig, ParallelConfig, ParallelExecutor, StateDiff, StateError, StateReader,
    executor::execute_tx_env,
    revm::{
        bytecode::Bytecode,
        context::BlockEnv,
        primitives::{KECCAK_EMPTY, hardfork::SpecId},
        state::AccountInfo,
    },
};

/// Largest fixture file read. ethereum/tests' biggest state-test file is about 25 MiB; a file
/// beyond this bound is reported as a failure instead of being loaded into memory.
const FIXTURE_SIZE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Deepest directory nesting followed when collecting fixtures (GeneralStateTests nests 4).
const DIRECTORY_DEPTH_MAX: usize = 16;

/// The forks this runner executes, in order. Earlier forks are out of scope: rtchain runs Prague
/// rules and ethereum/tests' pre-Cancun sections cover older EVM rules only.
const RUN_FORKS: [(SpecName, SpecId, &str); 3] = [
    (SpecName::Cancun, SpecId::CANCUN, "Cancun"),
    (SpecName::Prague, SpecId::PRAGUE, "Prague"),
    (SpecName::Osaka, SpecId::OSAKA, "Osaka"),
];

/// Fixture files not run, by file name, with the reason (also in docs/conformance.md). revm's
/// own runner (revme) skips the same files for the same reasons.
const KNOWN_SKIPS: &[(&str, &str)] = &[
    ("ValueOverflowParis.json", VALUE_OVERFLOW),
    ("RevertInCreateInInitCreate2Paris.json", EIP7610),
    ("create2collisionStorageParis.json", EIP7610),
    ("dynamicAccountOverwriteEmpty_Paris.json", EIP7610),
    ("RevertInCreateInInit_Paris.json", EIP7610),
    ("InitCollisionParis.json", EIP7610),
];

const VALUE_OVERFLOW: &str = "fixture format: transaction values wider than 256 bits \
    (\"0x:bigint ...\") that no U256 field, and so no state-test parser, can hold";

const EIP7610: &str = "EIP-7610 not implemented by revm 43: CREATE onto an address with storage \
    but no code and nonce 0 must fail (collision); such a pre-state cannot arise on mainnet, nor \
    on rtchain except through a genesis allocation";

/// How `run` behaves; the `statetest` subcommand's flags.
#[derive(Debug, Clone, Default)]
pub struct StatetestOptions {
    /// Run only this fork's cases ("Cancun", "Prague" or "Osaka", any case); all three if `None`.
    pub fork: Option<String>,
    /// Worker threads; the machine's available parallelism if `None`.
    pub jobs: Option<NonZeroUsize>,
    /// Also print every skipped case, per-file timings and the skip reasons with their counts.
    pub verbose: bool,
    /// Execute each case as the node does: the fixture's signed transaction (`txbytes`)
    /// decoded and checked like a submission, then run by the [`ParallelExecutor`] forced to
    /// speculate on a worker thread and validate at commit.
    pub parallel: bool,
}

/// Outcome of a run. `Display` is the final line: `N passed, M failed, K skipped`.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Cases of forks outside the selection (before Cancun, or excluded by `fork`): neither run
    /// nor counted as skipped.
    pub not_selected: u64,
    /// Skipped cases by reason.
    pub skip_reasons: BTreeMap<String, u64>,
    /// Every failure, in file order.
    pub failures: Vec<CaseFailure>,
    pub files: u64,
    pub elapsed: Duration,
}

impl Summary {
    pub fn success(&self) -> bool {
        self.failed == 0
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// Which case: file, test name, fork and the (data, gas, value) indexes. A failure of a whole
/// file (unreadable, malformed) has no test, fork or indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseId {
    pub file: PathBuf,
    pub test: Option<String>,
    pub fork: Option<String>,
    /// (data, gas, value).
    pub indexes: Option<(usize, usize, usize)>,
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(test) = &self.test {
            write!(f, " {test}")?;
        }
        if let Some(fork) = &self.fork {
            write!(f, " {fork}")?;
        }
        if let Some((d, g, v)) = self.indexes {
            write!(f, " d={d} g={g} v={v}")?;
        }
        Ok(())
    }
}

/// One failing case; `Display` is its output line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseFailure {
    pub case: CaseId,
    pub reason: FailureReason,
}

impl fmt::Display for CaseFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FAIL {}: {}", self.case, self.reason)
    }
}

/// What differed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailureReason {
    #[error("state root got {got} expected {expected}")]
    StateRoot { got: B256, expected: B256 },
    #[error("logs hash got {got} expected {expected}")]
    LogsHash { got: B256, expected: B256 },
    #[error(
        "state root got {got_root} expected {expected_root}; \
         logs hash got {got_logs} expected {expected_logs}"
    )]
    StateRootAndLogsHash {
        got_root: B256,
        expected_root: B256,
        got_logs: B256,
        expected_logs: B256,
    },
    #[error("unexpected exception: {got}")]
    UnexpectedException { got: String },
    #[error("expected exception {expected}, but the transaction executed ({outcome})")]
    MissingException { expected: String, outcome: String },
    #[error("bad fixture: {0}")]
    BadFixture(String),
    #[error("{0}")]
    Backend(StateError),
    #[error("executor panicked: {0}")]
    Panic(String),
}

/// Why a run could not start; failures of cases are in the [`Summary`] instead.
#[derive(Debug, thiserror::Error)]
pub enum StatetestError {
    #[error("{}: no such file or directory", .0.display())]
    PathNotFound(PathBuf),
    #[error("reading {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: directories nested deeper than {DIRECTORY_DEPTH_MAX}", .0.display())]
    TooDeep(PathBuf),
    #[error("no .json fixture files under the given paths")]
    NoFixtures,
    #[error("unknown fork {0:?}: statetest runs Cancun, Prague or Osaka")]
    UnknownFork(String),
    #[error("cannot start {jobs} worker threads: {reason}")]
    ThreadPool { jobs: usize, reason: String },
    #[error("writing the report: {0}")]
    Output(io::Error),
}

/// Runs every fixture file under `paths` (files, or directories searched for `*.json`), prints
/// one line per failing case and then `N passed, M failed, K skipped` to stdout, and returns the
/// summary; the caller exits non-zero unless [`Summary::success`].
pub fn run(paths: &[PathBuf], options: &StatetestOptions) -> Result<Summary, StatetestError> {
    let stdout = io::stdout();
    run_to(paths, options, &mut stdout.lock())
}

/// [`run`], writing the report to `out`.
pub fn run_to(
    paths: &[PathBuf],
    options: &StatetestOptions,
    out: &mut dyn Write,
) -> Result<Summary, StatetestError> {
    let started = Instant::now();
    let forks = ForkSelection::new(options.fork.as_deref())?;
    let files = collect_files(paths)?;
    let jobs = options
        .jobs
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .thread_name(|i| format!("statetest-{i}"))
        .stack_size(rtchain_exec::EVM_THREAD_STACK_BYTES)
        .build()
        .map_err(|e| StatetestError::ThreadPool {
            jobs,
            reason: e.to_string(),
        })?;
    // One task per file: files differ in cost by orders of magnitude (a 1-case file next to a
    // 500-case one), so rayon must not batch them.
    let executor = if options.parallel {
        Some(
            ParallelExecutor::new(ParallelConfig {
                threads: 2,
                // Every batch speculates, however small, cheap or conflicting.
                min_batch_txs: 1,
                conflict_pct_max: 100,
                conflict_sample_txs: u32::MAX,
                min_avg_gas_limit: 0,
            })
            .map_err(|e| StatetestError::ThreadPool {
                jobs: 2,
                reason: e.to_string(),
            })?,
        )
    } else {
        None
    };
    let reports: Vec<FileReport> = pool.install(|| {
        files
            .par_iter()
            .with_max_len(1)
            .map(|file| run_file(file, &forks, executor.as_ref()))
            .collect()
    });

    let mut summary = Summary {
        files: files.len() as u64,
        ..Summary::default()
    };
    let mut speculated = 0;
    for report in reports {
        speculated += report.speculated;
        summary.passed += report.passed;
        summary.not_selected += report.not_selected;
        for failure in report.failures {
            writeln!(out, "{failure}").map_err(StatetestError::Output)?;
            summary.failed += 1;
            summary.failures.push(failure);
        }
        for (case, reason) in report.skipped {
            if options.verbose {
                writeln!(out, "SKIP {case}: {reason}").map_err(StatetestError::Output)?;
            }
            summary.skipped += 1;
            *summary.skip_reasons.entry(reason).or_default() += 1;
        }
        if options.verbose {
            writeln!(
                out,
                "file {} ({} ms)",
                report.file.display(),
                report.elapsed.as_millis()
            )
            .map_err(StatetestError::Output)?;
        }
    }
    summary.elapsed = started.elapsed();
    if options.parallel {
        writeln!(
            out,
            "parallel path: {speculated} cases executed speculatively on a worker and validated at commit"
        )
        .map_err(StatetestError::Output)?;
    }
    if options.verbose {
        for (reason, count) in &summary.skip_reasons {
            writeln!(out, "skipped {count}: {reason}").map_err(StatetestError::Output)?;
        }
        writeln!(
            out,
            "{} files, {} cases of other forks not selected, {} jobs, {:.1} s",
            summary.files,
            summary.not_selected,
            jobs,
            summary.elapsed.as_secs_f64()
        )
        .map_err(StatetestError::Output)?;
    }
    writeln!(out, "{summary}").map_err(StatetestError::Output)?;
    Ok(summary)
}

/// The `*.json` files under `paths`, sorted so that output is in a stable order. A file named
/// explicitly is taken whatever its extension.
fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, StatetestError> {
    let mut files = Vec::new();
    for path in paths {
        let meta = fs::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StatetestError::PathNotFound(path.clone()),
            _ => StatetestError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        if meta.is_dir() {
            collect_dir(path, 0, &mut files)?;
        } else {
            files.push(path.clone());
        }
    }
    if files.is_empty() {
        return Err(StatetestError::NoFixtures);
    }
    files.sort();
    files.dedup();
    Ok(files)
}

fn collect_dir(dir: &Path, depth: usize, files: &mut Vec<PathBuf>) -> Result<(), StatetestError> {
    if depth > DIRECTORY_DEPTH_MAX {
        return Err(StatetestError::TooDeep(dir.to_path_buf()));
    }
    let io_error = |source| StatetestError::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(io_error)? {
        let entry = entry.map_err(io_error)?;
        let path = entry.path();
        if entry.file_type().map_err(io_error)?.is_dir() {
            collect_dir(&path, depth + 1, files)?;
        } else if path.extension().is_some_and(|ext| ext == "json") {
            files.push(path);
        }
    }
    Ok(())
}

/// Which forks of a fixture's `post` section run.
struct ForkSelection {
    /// Index into [`RUN_FORKS`]; all of them if `None`.
    only: Option<usize>,
}

enum ForkChoice {
    Run {
        spec: SpecId,
        name: &'static str,
    },
    /// Out of scope; counted in `not_selected`.
    NotSelected,
    /// A fork at or after Cancun that this runner cannot execute.
    Unsupported,
}

impl ForkSelection {
    fn new(fork: Option<&str>) -> Result<Self, StatetestError> {
        let Some(fork) = fork else {
            return Ok(Self { only: None });
        };
        RUN_FORKS
            .iter()
            .position(|(_, _, name)| name.eq_ignore_ascii_case(fork))
            .map(|index| Self { only: Some(index) })
            .ok_or_else(|| StatetestError::UnknownFork(fork.to_string()))
    }

    fn choose(&self, fork: &SpecName) -> ForkChoice {
        // SpecName's order is the forks' order; names it does not know (transition forks) are
        // `Unknown`, which sorts last and so counts as unsupported rather than out of scope.
        if *fork < SpecName::Cancun {
            return ForkChoice::NotSelected;
        }
        match RUN_FORKS.iter().position(|(name, _, _)| name == fork) {
            Some(index) if self.only.is_none_or(|only| only == index) => {
                let (_, spec, name) = RUN_FORKS[index];
                ForkChoice::Run { spec, name }
            }
            Some(_) => ForkChoice::NotSelected,
            None if self.only.is_some() => ForkChoice::NotSelected,
            None => ForkChoice::Unsupported,
        }
    }
}

/// What happened to the cases of one file.
struct FileReport {
    file: PathBuf,
    passed: u64,
    /// Cases the parallel path ran speculatively (`--parallel`).
    speculated: u64,
    not_selected: u64,
    failures: Vec<CaseFailure>,
    skipped: Vec<(CaseId, String)>,
    elapsed: Duration,
}

impl FileReport {
    fn file_case(&self) -> CaseId {
        CaseId {
            file: self.file.clone(),
            test: None,
            fork: None,
            indexes: None,
        }
    }
}

fn run_file(path: &Path, forks: &ForkSelection, executor: Option<&ParallelExecutor>) -> FileReport {
    let started = Instant::now();
    let mut report = FileReport {
        file: path.to_path_buf(),
        passed: 0,
        speculated: 0,
        not_selected: 0,
        failures: Vec::new(),
        skipped: Vec::new(),
        elapsed: Duration::ZERO,
    };
    match read_fixture(path) {
        Ok(bytes) => run_suite(&bytes, forks, executor, &mut report),
        Err(problem) => {
            let case = report.file_case();
            let reason = FailureReason::BadFixture(problem);
            report.failures.push(CaseFailure { case, reason });
        }
    }
    report.elapsed = started.elapsed();
    report
}

fn read_fixture(path: &Path) -> Result<Vec<u8>, String> {
    let size_bytes = fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if size_bytes > FIXTURE_SIZE_BYTES_MAX {
        return Err(format!(
            "{size_bytes} bytes, more than the {FIXTURE_SIZE_BYTES_MAX} this runner reads"
        ));
    }
    fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

fn run_suite(
    bytes: &[u8],
    forks: &ForkSelection,
    executor: Option<&ParallelExecutor>,
    report: &mut FileReport,
) {
    let file_name = report
        .file
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    if let Some((_, reason)) = KNOWN_SKIPS.iter().find(|(name, _)| *name == file_name) {
        let case = report.file_case();
        // A file that is not even JSON counts as one skipped case.
        for _ in 0..count_selected_cases(bytes, forks).unwrap_or(1) {
            report.skipped.push((case.clone(), (*reason).to_string()));
        }
        return;
    }
    let suite: TestSuite = match serde_json::from_slice(bytes) {
        Ok(suite) => suite,
        Err(e) => {
            let case = report.file_case();
            report.failures.push(CaseFailure {
                case,
                reason: FailureReason::BadFixture(format!("cannot parse: {e}")),
            });
            return;
        }
    };
    for (name, unit) in &suite.0 {
        let pre = FixtureState::new(unit);
        for (fork, tests) in &unit.post {
            let (spec, fork_name) = match forks.choose(fork) {
                ForkChoice::Run { spec, name } => (spec, name),
                ForkChoice::NotSelected => {
                    report.not_selected += tests.len() as u64;
                    continue;
                }
                ForkChoice::Unsupported => {
                    for test in tests {
                        let case = CaseId {
                            file: report.file.clone(),
                            test: Some(name.clone()),
                            fork: Some(format!("{fork:?}")),
                            indexes: Some(indexes(test)),
                        };
                        let reason = format!("fork {fork:?} is not run (Cancun, Prague, Osaka)");
                        report.skipped.push((case, reason));
                    }
                    continue;
                }
            };
            let env = environment(unit, spec);
            for test in tests {
                let case = CaseId {
                    file: report.file.clone(),
                    test: Some(name.clone()),
                    fork: Some(fork_name.to_string()),
                    indexes: Some(indexes(test)),
                };
                let verdict = match &env {
                    Ok((config, context, block)) => {
                        // A panic in the executor is a failure of this case, not of the run.
                        catch_unwind(AssertUnwindSafe(|| match executor {
                            Some(executor) => {
                                let (verdict, speculated) =
                                    run_case_parallel(&pre, unit, config, context, test, executor);
                                report.speculated += u64::from(speculated);
                                verdict
                            }
                            None => run_case(&pre, unit, config, block, test),
                        }))
                        .unwrap_or_else(|panic| {
                            Verdict::Fail(FailureReason::Panic(panic_message(panic.as_ref())))
                        })
                    }
                    Err(reason) => Verdict::Fail(FailureReason::BadFixture(reason.clone())),
                };
                match verdict {
                    Verdict::Pass => report.passed += 1,
                    Verdict::Fail(reason) => report.failures.push(CaseFailure { case, reason }),
                    Verdict::Skip(reason) => report.skipped.push((case, reason)),
                }
            }
        }
    }
}

fn indexes(test: &Test) -> (usize, usize, usize) {
    (test.indexes.data, test.indexes.gas, test.indexes.value)
}

/// Cases of the selected forks in a file that is not run, read leniently so that a file whose
/// values do not fit revm's types can still be counted.
fn count_selected_cases(bytes: &[u8], forks: &ForkSelection) -> Option<usize> {
    let Ok(serde_json::Value::Object(units)) = serde_json::from_slice(bytes) else {
        return None;
    };
    let cases = units
        .values()
        .filter_map(|unit| unit.get("post")?.as_object())
        .flat_map(|post| post.iter())
        .filter(|(fork, _)| {
            let fork = serde_json::from_value(serde_json::Value::String((*fork).clone()))
                .unwrap_or(SpecName::Unknown);
            !matches!(forks.choose(&fork), ForkChoice::NotSelected)
        })
        .map(|(_, cases)| cases.as_array().map_or(0, Vec::len))
        .sum();
    Some(cases)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string())
}

/// The chain configuration and block environment a fixture's `env` describes, for one fork.
fn environment(
    unit: &TestUnit,
    spec: SpecId,
) -> Result<(ExecConfig, BlockContext, BlockEnv), String> {
    let env = &unit.env;
    let to_u64 = |value: U256, field: &str| {
        u64::try_from(value).map_err(|_| format!("env {field} {value} does not fit in 64 bits"))
    };
    let chain_id = to_u64(
        env.current_chain_id.unwrap_or(U256::from(1)),
        "currentChainID",
    )?;
    let gas_limit = to_u64(env.current_gas_limit, "currentGasLimit")?;
    let config = ExecConfig {
        spec,
        // Fixtures sign most transactions the pre-EIP-155 way: valid on chain, refused only by
        // RPC policy.
        allow_unprotected_txs: true,
        block_gas_limit: gas_limit,
        coinbase: env.current_coinbase,
        ..ExecConfig::dev(chain_id)
    };
    let context = BlockContext {
        number: to_u64(env.current_number, "currentNumber")?,
        timestamp: to_u64(env.current_timestamp, "currentTimestamp")?,
        beneficiary: env.current_coinbase,
        base_fee: to_u64(env.current_base_fee.unwrap_or_default(), "currentBaseFee")?,
        gas_limit,
        // After the merge DIFFICULTY reads prevrandao; state tests without currentRandom see
        // zero, as in geth's and revm's runners.
        prevrandao: env.current_random.unwrap_or_default(),
    };
    let mut block = context.block_env();
    // BlockContext models a chain without blobs (excess blob gas zero, blob base fee 1 wei);
    // blob tests set the excess, from which the blob base fee follows with the fork's
    // update fraction.
    if let Some(excess) = env.current_excess_blob_gas {
        let fraction = config.cfg_env().blob_base_fee_update_fraction();
        block.set_blob_excess_gas_and_price(to_u64(excess, "currentExcessBlobGas")?, fraction);
    }
    Ok((config, context, block))
}

enum Verdict {
    Pass,
    Fail(FailureReason),
    Skip(String),
}

fn run_case(
    pre: &FixtureState,
    unit: &TestUnit,
    config: &ExecConfig,
    block: &BlockEnv,
    test: &Test,
) -> Verdict {
    let parts = &unit.transaction;
    let (d, g, v) = indexes(test);
    if d >= parts.data.len() || g >= parts.gas_limit.len() || v >= parts.value.len() {
        return Verdict::Fail(FailureReason::BadFixture(format!(
            "indexes d={d} g={g} v={v} out of range ({} data, {} gas limits, {} values)",
            parts.data.len(),
            parts.gas_limit.len(),
            parts.value.len()
        )));
    }
    // revm's TxEnv holds these fees as u128, and Test::tx_env panics on larger ones.
    let too_big = |fee: Option<U256>| fee.is_some_and(|fee| u128::try_from(fee).is_err());
    if too_big(parts.max_priority_fee_per_gas) || too_big(parts.max_fee_per_blob_gas) {
        return Verdict::Skip("a fee does not fit revm's 128-bit TxEnv field".to_string());
    }
    let tx = match test.tx_env(unit) {
        Ok(tx) => tx,
        Err(e) => {
            return match &test.expect_exception {
                Some(expected) => Verdict::Skip(format!(
                    "transaction not expressible as a TxEnv ({e}); fixture expects {expected}"
                )),
                None => Verdict::Fail(FailureReason::BadFixture(format!("transaction: {e}"))),
            };
        }
    };
    let (result, diff) = match execute_tx_env(config, block, pre, tx) {
        Ok(executed) => executed,
        Err(e) => return Verdict::Fail(FailureReason::Backend(e)),
    };
    let got_logs = match (result, &test.expect_exception) {
        (Ok(result), None) => logs_hash(result.logs()),
        (Ok(result), Some(expected)) => {
            return Verdict::Fail(FailureReason::MissingException {
                expected: expected.clone(),
                outcome: outcome(&result),
            });
        }
        (Err(invalid), None) => {
            return Verdict::Fail(FailureReason::UnexpectedException {
                got: invalid.to_string(),
            });
        }
        // Refused as the fixture expects; the root check below then confirms that the state
        // is the pre-state (the fixture's hash for such cases).
        (Err(_), Some(_)) => logs_hash(&[]),
    };
    check_post(pre, &diff, got_logs, test)
}

/// The post-state root of `diff` over the pre-state and the logs hash against the fixture's.
fn check_post(pre: &FixtureState, diff: &StateDiff, got_logs: B256, test: &Test) -> Verdict {
    let state_root = pre.state_root_after(diff);
    let root_ok = state_root == test.hash;
    let logs_ok = got_logs == test.logs;
    match (root_ok, logs_ok) {
        (true, true) => Verdict::Pass,
        (false, true) => Verdict::Fail(FailureReason::StateRoot {
            got: state_root,
            expected: test.hash,
        }),
        (true, false) => Verdict::Fail(FailureReason::LogsHash {
            got: got_logs,
            expected: test.logs,
        }),
        (false, false) => Verdict::Fail(FailureReason::StateRootAndLogsHash {
            got_root: state_root,
            expected_root: test.hash,
            got_logs,
            expected_logs: test.logs,
        }),
    }
}

/// One case the node's way: the fixture's signed transaction decoded and checked as a
/// submission would be, then executed by the parallel executor (speculation on a worker, read
/// validation at commit, lazy fee payment). Returns the verdict and whether it speculated.
fn run_case_parallel(
    pre: &FixtureState,
    unit: &TestUnit,
    config: &ExecConfig,
    context: &BlockContext,
    test: &Test,
    executor: &ParallelExecutor,
) -> (Verdict, bool) {
    let Some(raw) = &test.txbytes else {
        return (
            Verdict::Skip("no txbytes: the fixture has no signed transaction".to_string()),
            false,
        );
    };
    if unit
        .env
        .current_excess_blob_gas
        .is_some_and(|e| !e.is_zero())
    {
        return (
            Verdict::Skip(
                "excess blob gas: the node's block context has none (blob base fee 1 wei)"
                    .to_string(),
            ),
            false,
        );
    }
    let refused = |why: String| match &test.expect_exception {
        // Refused before execution, as the fixture expects: nothing changes.
        Some(_) => (
            if pre.state_root_after(&StateDiff::default()) == test.hash {
                Verdict::Pass
            } else {
                Verdict::Fail(FailureReason::StateRoot {
                    got: pre.state_root_after(&StateDiff::default()),
                    expected: test.hash,
                })
            },
            false,
        ),
        None => (
            Verdict::Fail(FailureReason::UnexpectedException { got: why }),
            false,
        ),
    };
    // EIP-2718 type 3: the node's chain takes no blob transactions (decoding refuses them).
    if raw.first() == Some(&0x03) {
        return (
            Verdict::Skip("blob transaction: the node takes none".to_string()),
            false,
        );
    }
    let tx = match rtchain_exec::decode_and_recover(raw, config) {
        Ok(tx) => tx,
        Err(e) => return refused(e.to_string()),
    };
    let (result, stats) =
        match executor.execute_batch_with_stats(config, context, pre, vec![tx], 0, 0) {
            Ok(executed) => executed,
            Err(e) => return (Verdict::Fail(FailureReason::Backend(e)), false),
        };
    let speculated = stats.sequential.is_none();
    let Some(outcome) = result.outcomes.into_iter().next() else {
        return (
            Verdict::Fail(FailureReason::BadFixture("no outcome".into())),
            speculated,
        );
    };
    let logs = match (outcome, &test.expect_exception) {
        (rtchain_exec::TxOutcome::Included { receipt, .. }, None) => {
            logs_hash(receipt.receipt.logs())
        }
        (rtchain_exec::TxOutcome::Included { receipt, .. }, Some(expected)) => {
            return (
                Verdict::Fail(FailureReason::MissingException {
                    expected: expected.clone(),
                    outcome: format!("included, status {}", receipt.receipt.status()),
                }),
                speculated,
            );
        }
        (rtchain_exec::TxOutcome::Rejected { error, .. }, _) => {
            let (verdict, _) = refused(error.to_string());
            return (verdict, speculated);
        }
        (rtchain_exec::TxOutcome::Deferred { .. }, _) => {
            let (verdict, _) = refused("does not fit the block".to_string());
            return (verdict, speculated);
        }
    };
    (check_post(pre, &result.diff, logs, test), speculated)
}

fn outcome(result: &rtchain_exec::revm::context_interface::result::ExecutionResult) -> String {
    use rtchain_exec::revm::context_interface::result::ExecutionResult;
    match result {
        ExecutionResult::Success { .. } => "success".to_string(),
        ExecutionResult::Revert { .. } => "reverted".to_string(),
        ExecutionResult::Halt { reason, .. } => format!("halted: {reason:?}"),
    }
}

/// keccak256 of the RLP list of a transaction's logs: the `logs` field of a state test.
pub fn logs_hash(logs: &[Log]) -> B256 {
    let mut out = Vec::with_capacity(alloy_rlp::list_length(logs));
    alloy_rlp::encode_list(logs, &mut out);
    keccak256(&out)
}

/// A state test's pre-state as the executor reads it, with each account's storage root
/// computed once so that post-state roots only rehash the accounts a case changed.
#[derive(Debug, Clone, Default)]
pub struct FixtureState {
    accounts: HashMap<Address, FixtureAccount>,
    codes: HashMap<B256, Bytecode>,
}

#[derive(Debug, Clone)]
struct FixtureAccount {
    info: AccountInfo,
    storage: HashMap<U256, U256>,
    storage_root: B256,
}

impl FixtureState {
    pub fn new(unit: &TestUnit) -> Self {
        let mut state = Self::default();
        for (address, account) in &unit.pre {
            let code_hash = keccak256(&account.code);
            if !account.code.is_empty() {
                // Malformed EIP-7702 designators are kept as legacy code, as revm's runner does.
                let code = Bytecode::new_raw_checked(account.code.clone())
                    .unwrap_or_else(|_| Bytecode::new_legacy(account.code.clone()));
                state.codes.insert(code_hash, code);
            }
            let storage: HashMap<U256, U256> = account
                .storage
                .iter()
                .map(|(slot, value)| (*slot, *value))
                .collect();
            let info = AccountInfo {
                balance: account.balance,
                nonce: account.nonce,
                code_hash,
                code: None,
                ..AccountInfo::default()
            };
            let storage_root = storage_root(&storage);
            state.accounts.insert(
                *address,
                FixtureAccount {
                    info,
                    storage,
                    storage_root,
                },
            );
        }
        state
    }

    /// Root of the state trie after `diff` is applied to this state, as storage would commit
    /// it: an account the diff removes is gone with its storage; a cleared storage starts empty
    /// before the written slots; zero slots are not in the trie. Untouched accounts stay, empty
    /// ones included (EIP-161 removes only touched empty accounts, which the diff records).
    pub fn state_root_after(&self, diff: &StateDiff) -> B256 {
        let mut leaves: Vec<(B256, TrieAccount)> =
            Vec::with_capacity(self.accounts.len() + diff.accounts.len());
        for (address, account) in &self.accounts {
            if !diff.accounts.contains_key(address) {
                let info = &account.info;
                leaves.push((
                    keccak256(address),
                    TrieAccount::new(
                        info.nonce,
                        info.balance,
                        account.storage_root,
                        info.code_hash,
                    ),
                ));
            }
        }
        for (address, change) in &diff.accounts {
            let Some(info) = &change.info else { continue };
            let base = self.accounts.get(address);
            let storage_root = match base {
                Some(base) if change.storage.is_empty() && !change.storage_cleared => {
                    base.storage_root
                }
                _ => {
                    let mut storage = match base {
                        Some(base) if !change.storage_cleared => base.storage.clone(),
                        _ => HashMap::new(),
                    };
                    storage.extend(change.storage.iter().map(|(slot, value)| (*slot, *value)));
                    storage_root(&storage)
                }
            };
            leaves.push((
                keccak256(address),
                TrieAccount::new(info.nonce, info.balance, storage_root, info.code_hash),
            ));
        }
        state_root_unsorted(leaves)
    }
}

fn storage_root(storage: &HashMap<U256, U256>) -> B256 {
    storage_root_unhashed(
        storage
            .iter()
            .filter(|(_, value)| !value.is_zero())
            .map(|(slot, value)| (B256::from(*slot), *value)),
    )
}

impl StateReader for FixtureState {
    fn account(&self, address: Address) -> Result<Option<AccountInfo>, StateError> {
        Ok(self
            .accounts
            .get(&address)
            .map(|account| account.info.clone()))
    }

    fn storage(&self, address: Address, slot: U256) -> Result<U256, StateError> {
        Ok(self
            .accounts
            .get(&address)
            .and_then(|account| account.storage.get(&slot).copied())
            .unwrap_or_default())
    }

    fn code(&self, code_hash: B256) -> Result<Option<Bytecode>, StateError> {
        if code_hash == KECCAK_EMPTY {
            return Ok(Some(Bytecode::default()));
        }
        Ok(self.codes.get(&code_hash).cloned())
    }

    /// State tests define the hash of block `n` as keccak256 of its decimal digits (geth's
    /// `vmTestBlockHash`, revm's `EmptyDB`).
    fn block_hash(&self, number: u64) -> Result<B256, StateError> {
        Ok(keccak256(number.to_string().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ethereum/tests GeneralStateTests/stExample/add11.json (MIT), without its `_info`.
    const ADD11: &str = r#"{"add11": {"env": {"currentBaseFee": "0x0a", "currentCoinbase": "0x2adc25665018aa1fe0e6bc666dac8fc2697ff9ba", "currentDifficulty": "0x020000", "currentExcessBlobGas": "0x00", "currentGasLimit": "0xff112233445566", "currentNumber": "0x01", "currentRandom": "0x0000000000000000000000000000000000000000000000000000000000020000", "currentTimestamp": "0x03e8"}, "post": {"Cancun": [{"hash": "0xe8010ce590f401c9d61fef8ab05bea9bcec24281b795e5868809bc4e515aa530", "indexes": {"data": 0, "gas": 0, "value": 0}, "logs": "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347", "txbytes": "0xf863800a83061a8094095e7baea6a6c7c4c2dfeb977efac326af552d87830186a0801ba0ffb600e63115a7362e7811894a91d8ba4330e526f22121c994c4692035dfdfd5a06198379fcac8de3dbfac48b165df4bf88e2088f294b61efb9a65fe2281c76e16"}]}, "pre": {"0x095e7baea6a6c7c4c2dfeb977efac326af552d87": {"balance": "0x0de0b6b3a7640000", "code": "0x600160010160005500", "nonce": "0x00", "storage": {}}, "0x2adc25665018aa1fe0e6bc666dac8fc2697ff9ba": {"balance": "0x00", "code": "0x", "nonce": "0x01", "storage": {}}, "0xa94f5374fce5edbc8e2a8697c15331677e6ebf0b": {"balance": "0x0de0b6b3a7640000", "code": "0x", "nonce": "0x00", "storage": {}}}, "transaction": {"data": ["0x"], "gasLimit": ["0x061a80"], "gasPrice": "0x0a", "nonce": "0x00", "secretKey": "0x45a915e4d060149eb4365960e6a7a45f334393093061116b197e3240065ff2d8", "sender": "0xa94f5374fce5edbc8e2a8697c15331677e6ebf0b", "to": "0x095e7baea6a6c7c4c2dfeb977efac326af552d87", "value": ["0x0186a0"]}}}"#;

    fn run_fixture(json: &str, options: &StatetestOptions) -> (Summary, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("case.json");
        fs::write(&path, json).expect("write fixture");
        let mut out = Vec::new();
        let summary = run_to(&[dir.path().to_path_buf()], options, &mut out).expect("run");
        (summary, String::from_utf8(out).expect("utf-8 report"))
    }

    #[test]
    fn add11_passes_and_reports_the_summary_line_last() {
        let (summary, out) = run_fixture(ADD11, &StatetestOptions::default());
        assert_eq!(
            (summary.passed, summary.failed, summary.skipped),
            (1, 0, 0),
            "{out}"
        );
        assert_eq!(out.lines().last(), Some("1 passed, 0 failed, 0 skipped"));
    }

    #[test]
    fn add11_passes_through_the_parallel_path_speculatively() {
        let options = StatetestOptions {
            parallel: true,
            ..StatetestOptions::default()
        };
        let (summary, out) = run_fixture(ADD11, &options);
        assert_eq!(
            (summary.passed, summary.failed, summary.skipped),
            (1, 0, 0),
            "{out}"
        );
        assert!(
            out.contains("parallel path: 1 cases executed speculatively"),
            "{out}"
        );
        // A wrong expectation fails there too: the path checks, not just runs.
        let wrong = ADD11.replace(
            "0xe8010ce590f401c9d61fef8ab05bea9bcec24281b795e5868809bc4e515aa530",
            "0x0000000000000000000000000000000000000000000000000000000000000001",
        );
        let (summary, _) = run_fixture(&wrong, &options);
        assert_eq!(summary.failed, 1);
    }

    #[test]
    fn wrong_expected_root_is_one_failure_line() {
        let wrong = ADD11.replace(
            "0xe8010ce590f401c9d61fef8ab05bea9bcec24281b795e5868809bc4e515aa530",
            "0x0000000000000000000000000000000000000000000000000000000000000001",
        );
        let (summary, out) = run_fixture(&wrong, &StatetestOptions::default());
        assert_eq!((summary.passed, summary.failed), (0, 1));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(lines[0].starts_with("FAIL ") && lines[0].contains(" add11 Cancun d=0 g=0 v=0: "));
        assert!(lines[0].contains(
            "state root got 0xe8010ce590f401c9d61fef8ab05bea9bcec24281b795e5868809bc4e515aa530"
        ));
        assert_eq!(lines[1], "0 passed, 1 failed, 0 skipped");
    }

    #[test]
    fn bad_fixtures_fail_without_panicking() {
        let (summary, out) = run_fixture("{ not json", &StatetestOptions::default());
        assert_eq!(summary.failed, 1, "{out}");
        assert!(out.contains("cannot parse"));

        let out_of_range = ADD11.replace(r#""data": 0, "gas": 0"#, r#""data": 7, "gas": 0"#);
        let (summary, out) = run_fixture(&out_of_range, &StatetestOptions::default());
        assert_eq!(summary.failed, 1, "{out}");
        assert!(out.contains("out of range"));
    }

    #[test]
    fn fork_filter_selects_and_rejects() {
        let prague = StatetestOptions {
            fork: Some("prague".into()),
            ..Default::default()
        };
        let (summary, _) = run_fixture(ADD11, &prague);
        assert_eq!((summary.passed, summary.not_selected), (0, 1));
        let bad = StatetestOptions {
            fork: Some("Frontier".into()),
            ..Default::default()
        };
        assert!(matches!(
            run_to(&[], &bad, &mut Vec::new()),
            Err(StatetestError::UnknownFork(_))
        ));
    }

    #[test]
    fn empty_state_has_the_empty_trie_root() {
        assert_eq!(
            FixtureState::default().state_root_after(&StateDiff::default()),
            alloy_trie::EMPTY_ROOT_HASH
        );
        // keccak256(rlp([])): the `logs` of every state-test case that emits no log.
        assert_eq!(
            logs_hash(&[]),
            alloy_primitives::b256!(
                "1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347"
            )
        );
    }

    /// The whole ethereum/tests GeneralStateTests set (minutes): `cargo test -p rtchain
    /// --bin rtchain statetest::tests::general_state_tests -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn general_state_tests() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/ethereum-tests/GeneralStateTests");
        let options = StatetestOptions {
            verbose: std::env::var_os("VERBOSE").is_some(),
            ..Default::default()
        };
        let summary = run(&[dir], &options).expect("run");
        assert!(summary.success(), "{summary}");
    }
}
