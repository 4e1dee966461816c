//! Raw bindings to the system DPDK 22.11 (bindgen at build time) and to our C wrappers of its
//! static-inline fast path (`rtc_*`). Everything here is `unsafe`; `rtchain-dataplane::dpdk` is
//! the safe layer. The crates.io `dpdk-sys` cannot be used: see README.md.

#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code
)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
