//! Real clients against a devnet: the viem and ethers scripts (tests/js/client.mjs,
//! tests/js/ethers-client.mjs) and the web3.py script (tests/python/client.py), each deploying the
//! ERC-20, sending ETH and tokens, reading events and checking revert reasons; viem with the
//! node's dev accounts (tests/js/dev-accounts.mjs); `cast send` with its default settings. Each
//! runs as a child process; its output is printed when it fails.
//!
//! Without node_modules (viem, ethers, cast) or .venv (web3.py) a test is skipped with a message,
//! unless the environment variable CI is set: in CI a missing tool is a failure
//! (scripts/setup.sh installs them).

mod common;

use std::{process::Command, time::Duration};

use alloy::primitives::{Address, U256};
use common::{
    DEV_KEY_0, Devnet, node_bin, repo_root, token_deploy_input,
    tools::{run_captured, tools_present},
};

/// Each script takes a few seconds; a hung one fails the test instead of hanging it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn viem_client_works_against_devnet() {
    let root = repo_root();
    if !tools_present(
        "viem client test",
        &[root.join("node_modules/viem/package.json")],
        &["node"],
    ) {
        return;
    }
    run_client(
        "viem",
        Command::new("node").arg(root.join("tests/js/client.mjs")),
    );
}

/// viem's wallet client without a local account, as a test suite uses anvil's: the devnet's
/// dev accounts send, deploy and sign (personal_sign, eth_signTypedData_v4) on the node.
#[test]
fn viem_uses_the_devnet_dev_accounts() {
    let root = repo_root();
    if !tools_present(
        "viem dev accounts test",
        &[root.join("node_modules/viem/package.json")],
        &["node"],
    ) {
        return;
    }
    run_client(
        "viem dev accounts",
        Command::new("node").arg(root.join("tests/js/dev-accounts.mjs")),
    );
}

#[test]
fn ethers_client_works_against_devnet() {
    let root = repo_root();
    if !tools_present(
        "ethers client test",
        &[root.join("node_modules/ethers/package.json")],
        &["node"],
    ) {
        return;
    }
    run_client(
        "ethers",
        Command::new("node").arg(root.join("tests/js/ethers-client.mjs")),
    );
}

/// `cast send` with its default settings (it waits for the receipt and prints it): an ETH
/// transfer, a Token deployment (`--create`) and a token transfer, then `cast balance` and
/// `cast call` (also `--block` at an older block) show their effect; `cast run` traces a
/// reverted transaction.
#[test]
fn cast_send_call_and_run_work_against_devnet() {
    let cast_bin = node_bin("cast");
    if !tools_present(
        "cast client test",
        std::slice::from_ref(&cast_bin),
        &[cast_bin.to_str().unwrap_or_default()],
    ) {
        return;
    }
    let node = Devnet::start(&[]);
    let url = node.url();
    let cast = |args: &[&str]| {
        let out = run_captured(
            "cast",
            Command::new(&cast_bin).current_dir(repo_root()).args(args),
            CLIENT_TIMEOUT,
        );
        assert!(
            out.status.is_some_and(|s| s.success()),
            "cast {} failed against {url}\n{}",
            args.join(" "),
            out.report
        );
        out.stdout
    };
    let send = |args: &[&str]| {
        let out = cast(
            &[
                &["send", "--rpc-url", &url, "--private-key", DEV_KEY_0],
                args,
            ]
            .concat(),
        );
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["status", "1", "(success)"]),
            "cast send {args:?}: no `status 1 (success)` in\n{out}"
        );
        out
    };
    let to = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"; // dev account 1
    let balance = || -> U256 {
        cast(&["balance", "--rpc-url", &url, to])
            .trim()
            .parse()
            .expect("cast balance")
    };

    let before = balance();
    send(&[to, "--value", "1ether"]);
    let one_ether = U256::from(10u64).pow(U256::from(18u64));
    assert_eq!(balance(), before + one_ether, "1 ether arrived");
    // `--unlocked`: cast leaves the signing to the node (eth_sendTransaction), which the devnet
    // does for its dev accounts.
    let unlocked = cast(&[
        "send",
        "--rpc-url",
        &url,
        "--unlocked",
        "--from",
        "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC", // dev account 2
        to,
        "--value",
        "1ether",
    ]);
    assert!(
        unlocked
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["status", "1", "(success)"]),
        "cast send --unlocked: no `status 1 (success)` in\n{unlocked}"
    );
    assert_eq!(
        balance(),
        before + one_ether + one_ether,
        "the unlocked ether arrived"
    );

    let create = token_deploy_input("Cast Token", "CT", U256::from(1000u64)).to_string();
    let receipt = send(&["--create", &create]);
    let token: Address = receipt
        .lines()
        .find_map(|l| l.strip_prefix("contractAddress"))
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no contractAddress in\n{receipt}"));

    let before_transfer = cast(&["block-number", "--rpc-url", &url]).trim().to_owned();
    send(&[&token.to_string(), "transfer(address,uint256)", to, "5"]);
    let balance_at = |holder: &str, block: &str| -> String {
        let out = cast(&[
            "call",
            "--rpc-url",
            &url,
            "--block",
            block,
            &token.to_string(),
            "balanceOf(address)(uint256)",
            holder,
        ]);
        out.split_whitespace().next().unwrap_or_default().to_owned()
    };
    let balance_of = |holder: &str| balance_at(holder, "latest");
    assert_eq!(balance_of(to), "5", "recipient's token balance");
    // The state history: at the block before the transfer, the recipient had none.
    assert_eq!(
        balance_at(to, &before_transfer),
        "0",
        "balance at block {before_transfer}"
    );
    assert_eq!(
        balance_of("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"),
        "995",
        "sender's token balance"
    );
    println!("cast send: 1 ether, Token deployed at {token}, 5 tokens sent; balances match");

    // `cast run` replays a reverted transaction on its block's parent state (read from the
    // history) and prints its trace with the revert reason.
    let reverter = repo_root().join("contracts/out/Reverter.json");
    let reverter: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reverter).expect("Reverter.json"))
            .expect("Reverter.json parses");
    let receipt = send(&["--create", reverter["bytecode"].as_str().expect("bytecode")]);
    let reverter: Address = receipt
        .lines()
        .find_map(|l| l.strip_prefix("contractAddress"))
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no contractAddress in\n{receipt}"));
    let failed = cast(&[
        "send",
        "--rpc-url",
        &url,
        "--private-key",
        DEV_KEY_0,
        "--gas-limit",
        "100000",
        "--json",
        &reverter.to_string(),
        "alwaysRevert()",
    ]);
    let failed: serde_json::Value = serde_json::from_str(failed.trim()).expect("cast send --json");
    assert_eq!(failed["status"], "0x0", "the transaction reverts: {failed}");
    let hash = failed["transactionHash"]
        .as_str()
        .expect("transaction hash");
    let run = run_captured(
        "cast run",
        Command::new(&cast_bin)
            .current_dir(repo_root())
            .args(["run", "--rpc-url", &url, hash]),
        CLIENT_TIMEOUT,
    );
    assert!(
        run.stdout.contains("[Revert] Reverter: always reverts"),
        "cast run {hash}: no trace with the revert reason\n{}",
        run.report
    );
    println!("cast run: the reverted transaction's trace shows its reason");
}

#[test]
fn web3py_client_works_against_devnet() {
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    if !tools_present(
        "web3.py client test",
        std::slice::from_ref(&python),
        &[python.to_str().unwrap_or_default()],
    ) {
        return;
    }
    run_client(
        "web3.py",
        Command::new(&python).arg(root.join("tests/python/client.py")),
    );
}

fn run_client(client: &str, command: &mut Command) {
    let node = Devnet::start(&[]);
    let out = run_captured(
        client,
        command.current_dir(repo_root()).env("RPC_URL", node.url()),
        CLIENT_TIMEOUT,
    );
    match out.status {
        Some(status) if status.success() => {
            println!(
                "{client} client passed in {:.1} s\n{}",
                out.secs, out.report
            );
        }
        Some(status) => panic!(
            "{client} client failed ({status}) against {}\n{}",
            node.url(),
            out.report
        ),
        None => panic!(
            "{client} client did not finish within {CLIENT_TIMEOUT:?}\n{}",
            out.report
        ),
    }
}
