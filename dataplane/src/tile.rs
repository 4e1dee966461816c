//! Which core runs which tile, and the thread launcher that pins a tile before it allocates.
//!
//! A tile is a thread that does one job on one core (see ARCHITECTURE.md, "Tiles"). The
//! [`CoreMap`] from the config names the cores; [`CoreMap::validate`] checks it against the
//! CPUs this process may use before anything starts, and [`spawn_tile`] starts each tile
//! already pinned. An empty map (the default) pins nothing and lets the OS schedule, which is
//! what devnet and CI on a 2-core VM want.

use std::{collections::BTreeMap, fmt, io, sync::mpsc, thread};

use serde::{Deserialize, Serialize};

/// The cores each tile runs on. A role left empty (`[]` / absent) is not pinned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoreMap {
    /// One core per net tile (one net tile per NIC queue).
    pub net: Vec<usize>,
    pub verify: Vec<usize>,
    pub sequencer: Option<usize>,
    /// One core per execution shard.
    pub exec: Vec<usize>,
    pub consensus: Option<usize>,
    /// RPC, L1 and admin work (the tokio runtime).
    pub housekeeping: Option<usize>,
}

impl CoreMap {
    /// Every (role, core) pair in a fixed order, roles named as in error messages: `net[0]`,
    /// `verify[1]`, `sequencer`.
    pub fn assignments(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        let mut list = |role: &str, cores: &[usize]| {
            out.extend(
                cores
                    .iter()
                    .enumerate()
                    .map(|(i, &core)| (format!("{role}[{i}]"), core)),
            );
        };
        list("net", &self.net);
        list("verify", &self.verify);
        list("exec", &self.exec);
        for (role, core) in [
            ("sequencer", self.sequencer),
            ("consensus", self.consensus),
            ("housekeeping", self.housekeeping),
        ] {
            if let Some(core) = core {
                out.push((role.to_string(), core));
            }
        }
        out
    }

    /// Checks the map against this thread's allowed CPU set (call it from the main thread,
    /// before any tile is pinned: the set is read with `sched_getaffinity` on the calling
    /// thread, which is the process's set until something narrows it).
    pub fn validate(&self) -> Result<(), TileError> {
        self.validate_against(&allowed_cpus()?)
    }

    /// [`validate`](Self::validate) against a given allowed set (the pure part, for tests and
    /// for checking a config for another host).
    pub fn validate_against(&self, allowed: &[usize]) -> Result<(), TileError> {
        let mut owner: BTreeMap<usize, String> = BTreeMap::new();
        for (role, core) in self.assignments() {
            if !allowed.contains(&core) {
                return Err(TileError::CoreNotAllowed {
                    core,
                    role,
                    allowed: CpuSet(allowed.to_vec()).to_string(),
                });
            }
            if let Some(first) = owner.get(&core) {
                return Err(TileError::CoreTwice {
                    core,
                    first: first.clone(),
                    second: role,
                });
            }
            owner.insert(core, role);
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TileError {
    #[error("core map: core {core} ({role}) is not in this process's allowed CPU set {allowed}")]
    CoreNotAllowed {
        core: usize,
        role: String,
        allowed: String,
    },
    #[error("core map: core {core} is given to both {first} and {second}")]
    CoreTwice {
        core: usize,
        first: String,
        second: String,
    },
    #[error("reading the allowed CPU set (sched_getaffinity): {0}")]
    Affinity(io::Error),
    #[error("tile {tile}: could not pin to core {core}: {reason}")]
    Pin {
        tile: String,
        core: usize,
        reason: String,
    },
    #[error("tile {tile}: could not start its thread: {source}")]
    Spawn { tile: String, source: io::Error },
    #[error("tile {tile}: invalid tile name (contains a NUL byte)")]
    BadName { tile: String },
    #[error("tile {tile} panicked: {message}")]
    Panicked { tile: String, message: String },
}

/// Formats a CPU list as `{0,1}` / `{0-3,8}` for error messages.
struct CpuSet(Vec<usize>);

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut cpus = self.0.clone();
        cpus.sort_unstable();
        cpus.dedup();
        f.write_str("{")?;
        let mut i = 0;
        while i < cpus.len() {
            let start = cpus[i];
            let mut end = start;
            while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
                i += 1;
                end = cpus[i];
            }
            if i > 0 && start != cpus[0] {
                f.write_str(",")?;
            }
            // Runs of three or more read better as ranges; `{0,1}` stays a list.
            if end >= start + 2 {
                write!(f, "{start}-{end}")?;
            } else if end == start + 1 {
                write!(f, "{start},{end}")?;
            } else {
                write!(f, "{start}")?;
            }
            i += 1;
        }
        f.write_str("}")
    }
}

/// Largest CPU set we ask the kernel for: 64 Ki CPUs. `sched_getaffinity` fails with EINVAL
/// when the buffer is smaller than the kernel's CPU mask, so we start at glibc's 1024 and
/// double up to this bound.
const CPU_BITS_MAX: usize = 1 << 16;

/// The CPUs the calling thread may run on (on the main thread before pinning: the process's
/// allowed set, e.g. as narrowed by `taskset` or a cgroup cpuset), ascending.
pub fn allowed_cpus() -> Result<Vec<usize>, TileError> {
    let mut bits = 8 * std::mem::size_of::<libc::cpu_set_t>();
    loop {
        let mut mask = vec![0u64; bits / 64];
        let size_bytes = mask.len() * 8;
        // SAFETY: the kernel writes at most `size_bytes` bytes into `mask`, which is a live
        // buffer of exactly that size; `cpu_set_t` is a plain bit array, so a larger buffer
        // of u64 words has the same layout as a larger `cpu_set_t` (what CPU_ALLOC gives in C).
        let rc = unsafe {
            libc::sched_getaffinity(0, size_bytes, mask.as_mut_ptr().cast::<libc::cpu_set_t>())
        };
        if rc == 0 {
            let cpus = (0..bits)
                .filter(|&cpu| mask[cpu / 64] & (1u64 << (cpu % 64)) != 0)
                .collect();
            return Ok(cpus);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINVAL) && bits < CPU_BITS_MAX {
            bits *= 2;
            continue;
        }
        return Err(TileError::Affinity(err));
    }
}

/// A running tile. Dropping it detaches the thread; [`join`](Self::join) waits for it.
pub struct TileHandle<T> {
    name: String,
    core: Option<usize>,
    /// `None` only if start-up failed, which `spawn_tile` reports instead of a handle.
    thread: thread::JoinHandle<Option<T>>,
}

impl<T> TileHandle<T> {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The core the tile is pinned to, `None` if the OS schedules it.
    pub fn core(&self) -> Option<usize> {
        self.core
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the tile to return; a panic in the tile becomes [`TileError::Panicked`].
    pub fn join(self) -> Result<T, TileError> {
        match self.thread.join() {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(TileError::Panicked {
                tile: self.name,
                message: "tile did not start".to_string(),
            }),
            Err(payload) => Err(TileError::Panicked {
                tile: self.name,
                message: panic_message(payload.as_ref()),
            }),
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Starts tile `name` on a new thread pinned to `core` (`None`: not pinned), then runs `f` on
/// it.
///
/// The thread pins itself *before* calling `f`, so everything the tile allocates (rings,
/// buffers, ports) is first touched on its own core and lands on that core's NUMA node. This
/// function returns only after the pinning was done and checked: a tile that could not be
/// pinned is an error here, not a thread silently running on the wrong core.
/// Stack of every tile thread. The sequencer tile runs the EVM (the parallel executor commits on
/// the calling thread), and a call chain 1,024 frames deep overflows the default 2 MiB there
/// (`rtchain statetest --parallel` found it); the same as `rtchain_exec::EVM_THREAD_STACK_BYTES`.
/// Only the pages used are backed by memory.
pub const TILE_STACK_BYTES: usize = 64 << 20;

pub fn spawn_tile<F, T>(name: &str, core: Option<usize>, f: F) -> Result<TileHandle<T>, TileError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if name.contains('\0') {
        return Err(TileError::BadName {
            tile: name.to_string(),
        });
    }
    let (started_tx, started_rx) = mpsc::sync_channel::<Result<(), (usize, String)>>(1);
    let tile = name.to_string();
    let thread = thread::Builder::new()
        // Linux shows at most 15 bytes of a thread name (std truncates); keep tile names short.
        .name(name.to_string())
        .stack_size(TILE_STACK_BYTES)
        .spawn(move || {
            let pinned = match core {
                Some(core) => pin_current_thread(core).map_err(|reason| (core, reason)),
                None => Ok(()),
            };
            if let (Ok(()), Some(core)) = (&pinned, core) {
                bind_memory_near(core);
            }
            let ok = pinned.is_ok();
            // The receiver waits for exactly this message; if it has gone, nobody wants the
            // tile to run.
            let delivered = started_tx.send(pinned).is_ok();
            if ok && delivered { Some(f()) } else { None }
        })
        .map_err(|source| TileError::Spawn {
            tile: tile.clone(),
            source,
        })?;

    match started_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err((core, reason))) => {
            // The thread returns right after reporting the failure; join so it is not left
            // behind.
            let _ = thread.join();
            return Err(TileError::Pin { tile, core, reason });
        }
        Err(mpsc::RecvError) => {
            // Only possible if the thread died before reporting (e.g. a panic while pinning).
            let message = match thread.join() {
                Err(payload) => panic_message(payload.as_ref()),
                Ok(_) => "thread exited before reporting start-up".to_string(),
            };
            return Err(TileError::Panicked { tile, message });
        }
    }

    Ok(TileHandle {
        name: tile,
        core,
        thread,
    })
}

/// Pins the calling thread to `core` and checks that the kernel applied it.
/// Pins the calling thread to `core` and checks that it took (for threads another library
/// spawns, such as an executor's worker pool; tiles use [`spawn_tile`]).
/// After pinning to `core`: the thread's allocations come from that core's NUMA node (a no-op on
/// a one-node host). A refusal (a container without the permission) is logged, not fatal: the
/// kernel's first-touch placement still puts the pinned thread's pages on its node.
pub fn bind_memory_near(core: usize) {
    match crate::numa::bind_thread_memory_to_core(core) {
        Ok(Some(node)) => tracing::debug!("core {core}: memory bound to NUMA node {node}"),
        Ok(None) => {}
        Err(e) => tracing::warn!("core {core}: {e}; relying on first-touch placement"),
    }
}

pub fn pin_current_thread(core: usize) -> Result<(), String> {
    // `core_affinity` builds a fixed `cpu_set_t` (1024 CPUs) and indexes it without a bounds
    // check, so larger numbers must not reach it.
    let setsize = libc::CPU_SETSIZE as usize;
    if core >= setsize {
        return Err(format!(
            "core numbers of {setsize} and above are not supported"
        ));
    }
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        let allowed = allowed_cpus()
            .map(|cpus| CpuSet(cpus).to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"));
        return Err(format!(
            "sched_setaffinity refused it (is it in the allowed CPU set {allowed}?)"
        ));
    }
    match allowed_cpus() {
        Ok(cpus) if cpus == [core] => Ok(()),
        Ok(cpus) => Err(format!(
            "after pinning, the thread may still run on {}",
            CpuSet(cpus)
        )),
        Err(e) => Err(format!("could not read back the affinity: {e}")),
    }
}

/// Sets the calling thread's timer slack to 1 µs, so that its short sleeps end on time (the
/// default 50 µs slack bunches wake-ups: a load generator pacing sends every 50 µs would send in
/// clumps).
pub fn tight_timer_slack() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes an integer and changes only the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_map_is_empty_and_valid_anywhere() {
        let map = CoreMap::default();
        assert!(map.assignments().is_empty());
        map.validate().expect("empty map");
        map.validate_against(&[]).expect("empty map");
    }

    #[test]
    fn parses_with_defaults_and_rejects_unknown_fields() {
        let map: CoreMap = toml::from_str("net = [2]\nsequencer = 3\n").expect("valid map");
        assert_eq!(map.net, vec![2]);
        assert_eq!(map.sequencer, Some(3));
        assert!(map.verify.is_empty() && map.consensus.is_none());
        let err = toml::from_str::<CoreMap>("nett = [2]\n").expect_err("typo");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn core_outside_allowed_set_is_named() {
        let map = CoreMap {
            net: vec![0],
            verify: vec![1, 5],
            ..CoreMap::default()
        };
        let err = map
            .validate_against(&[0, 1])
            .expect_err("core 5 not allowed");
        assert_eq!(
            err.to_string(),
            "core map: core 5 (verify[1]) is not in this process's allowed CPU set {0,1}"
        );
    }

    #[test]
    fn core_given_twice_names_both_roles() {
        let map = CoreMap {
            net: vec![1],
            verify: vec![1],
            ..CoreMap::default()
        };
        let err = map.validate_against(&[0, 1]).expect_err("duplicate");
        assert_eq!(
            err.to_string(),
            "core map: core 1 is given to both net[0] and verify[0]"
        );

        let within = CoreMap {
            exec: vec![0, 0],
            ..CoreMap::default()
        };
        let err = within.validate_against(&[0, 1]).expect_err("duplicate");
        assert_eq!(
            err.to_string(),
            "core map: core 0 is given to both exec[0] and exec[1]"
        );

        let singles = CoreMap {
            sequencer: Some(3),
            housekeeping: Some(3),
            ..CoreMap::default()
        };
        let err = singles.validate_against(&[3]).expect_err("duplicate");
        assert_eq!(
            err.to_string(),
            "core map: core 3 is given to both sequencer and housekeeping"
        );
    }

    #[test]
    fn cpu_set_formatting() {
        assert_eq!(CpuSet(vec![1, 0]).to_string(), "{0,1}");
        assert_eq!(CpuSet(vec![0, 1, 2, 3, 8]).to_string(), "{0-3,8}");
        assert_eq!(CpuSet(vec![5]).to_string(), "{5}");
        assert_eq!(CpuSet(vec![]).to_string(), "{}");
        assert_eq!(CpuSet(vec![0, 2, 3, 4, 6, 7]).to_string(), "{0,2-4,6,7}");
    }

    #[test]
    fn allowed_cpus_is_non_empty() {
        let cpus = allowed_cpus().expect("sched_getaffinity");
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn pinned_tile_observes_its_affinity() {
        let allowed = allowed_cpus().expect("sched_getaffinity");
        let core = *allowed.last().expect("at least one CPU");
        let tile = spawn_tile("test-pin", Some(core), allowed_cpus).expect("spawn");
        assert_eq!(tile.core(), Some(core));
        assert_eq!(tile.name(), "test-pin");
        let seen = tile
            .join()
            .expect("tile ran")
            .expect("sched_getaffinity in tile");
        assert_eq!(seen, vec![core]);
        // The spawning thread is unaffected.
        assert_eq!(allowed_cpus().expect("sched_getaffinity"), allowed);
    }

    #[test]
    fn unpinned_tile_runs() {
        let tile = spawn_tile("test-free", None, || 41 + 1).expect("spawn");
        assert_eq!(tile.join().expect("tile ran"), 42);
    }

    #[test]
    fn pinning_to_a_forbidden_core_fails_at_spawn() {
        let allowed = allowed_cpus().expect("sched_getaffinity");
        // A CPU number within the kernel's mask size but outside the allowed set (no machine
        // this runs on has 1000 CPUs all allowed to a test).
        let core = (0..1000)
            .rev()
            .find(|c| !allowed.contains(c))
            .expect("a forbidden core");
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ran2 = std::sync::Arc::clone(&ran);
        let err = match spawn_tile("test-bad", Some(core), move || {
            ran2.store(true, std::sync::atomic::Ordering::SeqCst)
        }) {
            Ok(_) => panic!("pinning to core {core} should fail"),
            Err(e) => e,
        };
        assert!(
            matches!(err, TileError::Pin { core: c, .. } if c == core),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(&format!("could not pin to core {core}")),
            "{err}"
        );
        assert!(
            !ran.load(std::sync::atomic::Ordering::SeqCst),
            "f must not run unpinned"
        );

        let err = match spawn_tile("test-huge", Some(1 << 20), || ()) {
            Ok(_) => panic!("core 2^20 should be rejected"),
            Err(e) => e,
        };
        assert!(matches!(err, TileError::Pin { .. }), "{err}");
    }

    #[test]
    fn tile_panic_is_reported_on_join() {
        let tile = spawn_tile("test-panic", None, || -> u8 { panic!("boom") }).expect("spawn");
        match tile.join() {
            Err(TileError::Panicked { tile, message }) => {
                assert_eq!(tile, "test-panic");
                assert_eq!(message, "boom");
            }
            other => panic!("expected a panic report, got {:?}", other.map(|_| ())),
        }
    }
}
