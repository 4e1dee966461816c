//! TEMPORARY: runs `statetest` until src/main.rs wires the subcommand; delete then.
//! Usage: statetest-scratch [--fork NAME] [--jobs N] [--verbose] PATH...

#[path = "../statetest.rs"]
mod statetest;

use std::{num::NonZeroUsize, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let mut options = statetest::StatetestOptions::default();
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--fork" => options.fork = args.next(),
            "--jobs" => options.jobs = args.next().and_then(|n| n.parse::<NonZeroUsize>().ok()),
            "--verbose" => options.verbose = true,
            _ => paths.push(PathBuf::from(arg)),
        }
    }
    match statetest::run(&paths, &options) {
        Ok(summary) if summary.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("statetest: {e}");
            ExitCode::from(2)
        }
    }
}
