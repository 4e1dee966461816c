//! Binds the system DPDK (22.11, found with `pkg-config libdpdk`) and compiles C wrappers for its
//! static-inline fast path. Poll-mode drivers are not linked: EAL loads them at run time from
//! Debian's plugin directory (`/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0`).

use std::{env, path::PathBuf};

/// The libraries our bindings call into (the full `pkg-config --libs` list names 50-odd).
const LIBS: &[&str] = &[
    "rte_eal",
    "rte_ethdev",
    "rte_mbuf",
    "rte_mempool",
    "rte_ring",
    "rte_net",
    "rte_kvargs",
];

fn main() {
    println!("cargo:rerun-if-changed=csrc/wrapper.h");
    println!("cargo:rerun-if-changed=csrc/wrapper.c");
    let dpdk = match pkg_config::Config::new()
        .atleast_version("22.11")
        .cargo_metadata(false)
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => panic!(
            "DPDK 22.11 development files not found ({e}). Install them with scripts/setup.sh \
             (apt packages libdpdk-dev and dpdk)."
        ),
    };
    // `pkg-config --cflags` carries `-include rte_config.h` and `-march=...`: both matter (the
    // headers assume the config macros, and the inline fast path the target's instructions).
    let cflags = pkg_config::get_variable("libdpdk", "cflags").unwrap_or_default();
    let mut clang_args: Vec<String> = dpdk
        .include_paths
        .iter()
        .map(|p| format!("-I{}", p.display()))
        .collect();
    let raw_cflags = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .expect("pkg-config runs");
    let raw_cflags = String::from_utf8_lossy(&raw_cflags.stdout).to_string();
    let extra: Vec<String> = if cflags.is_empty() {
        raw_cflags.split_whitespace().map(str::to_string).collect()
    } else {
        cflags.split_whitespace().map(str::to_string).collect()
    };
    clang_args.extend(extra.iter().cloned());

    let mut build = cc::Build::new();
    build.file("csrc/wrapper.c").opt_level(3).warnings(false);
    for arg in &clang_args {
        build.flag(arg);
    }
    build.compile("rtc_dpdk_wrappers");

    for path in &dpdk.link_paths {
        println!("cargo:rustc-link-search=native={}", path.display());
    }
    for lib in LIBS {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }

    let bindings = bindgen::Builder::default()
        .header("csrc/wrapper.h")
        .clang_args(&clang_args)
        .allowlist_function("rtc_.*")
        .allowlist_function("rte_eal_(init|cleanup|process_type)")
        .allowlist_function("rte_eth_(dev_configure|dev_info_get|dev_start|dev_stop|dev_close|dev_count_avail|dev_get_port_by_name|dev_socket_id|rx_queue_setup|tx_queue_setup|macaddr_get|link_get_nowait|stats_get|stats_reset|promiscuous_enable|dev_set_mtu|dev_is_valid_port)")
        .allowlist_function("rte_pktmbuf_pool_create")
        .allowlist_function("rte_mempool_(free|avail_count|in_use_count)")
        .allowlist_function("rte_strerror|rte_socket_id|rte_get_tsc_hz|rte_lcore_count")
        .allowlist_type("rte_eth_conf|rte_eth_dev_info|rte_eth_stats|rte_eth_link|rte_ether_addr|rte_eth_rxconf|rte_eth_txconf")
        .allowlist_var("RTE_MAX_ETHPORTS|RTE_PKTMBUF_HEADROOM|RTE_MBUF_DEFAULT_BUF_SIZE|RTE_ETH_NAME_MAX_LEN|RTE_ETH_LINK_UP|SOCKET_ID_ANY")
        // mbufs and mempools are only ever handled through pointers and our wrappers: keeping
        // them opaque avoids binding their bitfields and packed unions.
        .opaque_type("rte_mbuf")
        .opaque_type("rte_mempool")
        .rustified_enum("rte_eth_rx_mq_mode|rte_eth_tx_mq_mode")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .expect("bindgen over the DPDK headers");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR set by cargo"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");
}
