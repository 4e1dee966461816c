//! The core map: tiles run on the cores the config names, and a bad map stops the node at start
//! with a message naming the core and the roles.

mod common;

use std::process::Command;

use common::{Devnet, free_port};

/// Each thread of `pid`: (name, allowed CPU list as the kernel prints it).
fn threads(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = entry.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or_default();
        out.push((name.trim().to_string(), cpus.trim().to_string()));
    }
    out
}

#[test]
fn tiles_run_on_the_cores_the_config_names() {
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(cpus >= 2, "this test needs two CPUs");
    let temp = tempfile::tempdir().unwrap();
    let node = Devnet::start_node_config(
        &temp.path().join("data"),
        free_port(),
        "[cores]\nhousekeeping = 0\nsequencer = 1\n",
    );
    let threads = threads(node.child.id());
    let on = |name: &str| -> Vec<String> {
        threads
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, cpus)| cpus.clone())
            .collect()
    };
    assert_eq!(on("sequencer"), ["1"], "{threads:?}");
    let workers = on("tokio-rt-worker");
    assert!(!workers.is_empty(), "{threads:?}");
    assert!(workers.iter().all(|c| c == "0"), "{threads:?}");
}

#[test]
fn a_bad_core_map_is_a_clear_error_at_start() {
    let temp = tempfile::tempdir().unwrap();
    for (cores, expected) in [
        ("sequencer = 1\nverify = [1]", "core 1 is given to both"),
        ("net = [4095]", "not in this process's allowed CPU set"),
    ] {
        let config = temp.path().join("node.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[rpc]\naddr = \"127.0.0.1:0\"\n[fastpath]\nlisten = \"127.0.0.1:0\"\n[cores]\n{cores}\n",
                temp.path().join("data").display().to_string()
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_rtchain"))
            .args(["node", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{cores}: {stderr}");
    }
}
