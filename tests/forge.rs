//! forge (foundry) against a devnet, offline: `forge build` of tests/foundry (solc-js behind
//! scripts/solc-shim.mjs), `forge script script/Deploy.s.sol --broadcast` (a CREATE, a CREATE2
//! through the deterministic deployer, two calls), then `forge test` forked from the devnet at the
//! newest block (`--fork-url`) and at an older one (`--fork-block-number`; the tests also fork at
//! the older block themselves with `vm.createSelectFork`), while a background sender keeps blocks
//! coming. forge's outputs (out/, cache/, broadcast/) go to a temporary directory.
//!
//! Without forge or solc-js (node_modules) or node the test is skipped with a message, unless the
//! environment variable CI is set: in CI a missing tool is a failure (scripts/setup.sh installs
//! them).

mod common;

use std::{
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use alloy::{
    primitives::{Address, B256, Bytes, TxKind, U256, address, keccak256},
    sol_types::SolCall,
};
use common::{
    CHAIN_ID, DEV_KEY_0, Devnet, Rpc, dev_signer, eip1559, node_bin, quantity_u64, repo_root, sign,
    tools::{run_captured, tools_present},
    wait_for,
};
use serde_json::{Value, json};

/// Where forge sends `new C{salt: s}(...)` (the dev genesis holds it, as anvil's does).
const CREATE2_DEPLOYER: Address = address!("4e59b44847b379578588920cA78FbF26c0B4956C");
/// The script's CREATE2 salt (DEPLOY_SALT, as a uint256).
const SALT: u64 = 7_777;
/// The script leaves the plain counter at 42 and the salted one (constructed with 7) at 8; the
/// test then sets the plain one to 43.
const OLD_NUMBER: u64 = 42;
const NEW_NUMBER: u64 = 43;
const SALTED_START: u64 = 7;
const SALTED_NUMBER: u64 = 8;

/// A cold `forge build` with solc-js takes a few seconds; a hung forge fails the test instead of
/// hanging it.
const FORGE_TIMEOUT: Duration = Duration::from_secs(300);
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(30);

alloy::sol! {
    interface Counter {
        function set(uint256 value) external;
        function number() external view returns (uint256);
    }
}

#[test]
fn forge_script_and_fork_tests_work_against_devnet() {
    let root = repo_root();
    let forge_bin = node_bin("forge");
    if !tools_present(
        "forge test",
        &[
            forge_bin.clone(),
            root.join("node_modules/solc/package.json"),
            root.join("scripts/solc-shim.mjs"),
        ],
        &["node", forge_bin.to_str().unwrap_or_default()],
    ) {
        return;
    }
    let project = root.join("tests/foundry");
    let outputs = tempfile::tempdir().expect("temp dir for forge's outputs");
    let forge = Forge {
        bin: forge_bin,
        project,
        outputs: outputs.path().to_owned(),
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let node = Devnet::start(&[]);
    let url = node.url();
    let rpc = Rpc::new(&url);
    let sender = BackgroundSender::start(&rt, rpc.clone());

    forge.run("forge build", &["build"], &[]);

    // The script: its CREATE is dev account 0's first transaction, its CREATE2 goes through the
    // deterministic deployer.
    let script = forge.run(
        "forge script",
        &[
            "script",
            "script/Deploy.s.sol",
            "--rpc-url",
            &url,
            "--broadcast",
            "--private-key",
            DEV_KEY_0,
        ],
        &[("DEPLOY_SALT", SALT.to_string())],
    );
    assert!(
        script.contains("ONCHAIN EXECUTION COMPLETE & SUCCESSFUL"),
        "forge script did not report success\n{script}"
    );
    let deployed = forge.deployments();
    let dev0 = dev_signer(0).address();
    let counter = dev0.create(0);
    assert_eq!(deployed.create, counter, "forge's CREATE address");

    // The CREATE2's input is salt ++ initcode, the initcode Counter's creation code and 7; the
    // address is keccak(0xff ++ deployer ++ salt ++ keccak(initcode))[12..], computed here.
    let salt = B256::from(U256::from(SALT));
    let mut initcode = forge.creation_code("Counter");
    initcode.extend_from_slice(&U256::from(SALTED_START).to_be_bytes::<32>());
    assert_eq!(
        deployed.create2_input,
        [salt.as_slice(), initcode.as_slice()].concat(),
        "the CREATE2 deployer's input: salt ++ Counter's initcode ++ constructor argument"
    );
    let mut preimage = vec![0xff];
    preimage.extend_from_slice(CREATE2_DEPLOYER.as_slice());
    preimage.extend_from_slice(salt.as_slice());
    preimage.extend_from_slice(keccak256(&initcode).as_slice());
    let salted = Address::from_slice(&keccak256(&preimage)[12..]);
    assert_eq!(
        deployed.create2, salted,
        "forge's predicted CREATE2 address"
    );

    let old_block = rt.block_on(async {
        // The block the older forks read, once it holds all of the script's transactions.
        let (rpc, last_block) = (&rpc, deployed.last_block);
        let old_block = wait_for(
            &format!("block {last_block} (the script's last)"),
            RECEIPT_TIMEOUT,
            || async move {
                let head = rpc.block_number().await.expect("eth_blockNumber");
                (head >= last_block).then_some(head)
            },
        )
        .await;
        for (name, address) in [("counter", counter), ("salted counter", salted)] {
            assert!(
                !rpc.code(address).await.is_empty(),
                "no code at the {name} {address}"
            );
        }
        let at_old = json!(format!("{old_block:#x}"));
        assert_eq!(
            number_at(rpc, counter, at_old.clone()).await,
            U256::from(OLD_NUMBER),
            "counter at block {old_block}"
        );
        assert_eq!(
            number_at(rpc, salted, at_old).await,
            U256::from(SALTED_NUMBER),
            "salted counter at block {old_block}"
        );
        old_block
    });

    // Then the counter changes, in a later block.
    let new_block = rt.block_on(async {
        let set = sign(
            &dev_signer(0),
            eip1559(
                rpc.nonce(dev0).await,
                TxKind::Call(counter),
                U256::ZERO,
                Counter::setCall {
                    value: U256::from(NEW_NUMBER),
                }
                .abi_encode()
                .into(),
                100_000,
            ),
        );
        rpc.send_raw(&set).await.expect("send set(43)");
        let receipt = rpc.wait_receipt(set.hash, RECEIPT_TIMEOUT).await;
        assert!(receipt.succeeded(), "set(43) failed: {receipt:?}");
        receipt.block_number.expect("block number of set(43)")
    });
    assert!(
        new_block > old_block,
        "set(43) is in block {new_block}, not after {old_block}"
    );
    println!(
        "counter {counter}, salted {salted}; 42 at block {old_block}, 43 from block {new_block}"
    );

    let env = |fork_block: Option<u64>| {
        let mut env = vec![
            ("COUNTER", counter.to_string()),
            ("SALTED", salted.to_string()),
            ("FORK_URL", url.clone()),
            ("OLD_BLOCK", old_block.to_string()),
            ("OLD_NUMBER", OLD_NUMBER.to_string()),
            ("NEW_BLOCK", new_block.to_string()),
            ("NEW_NUMBER", NEW_NUMBER.to_string()),
        ];
        if let Some(block) = fork_block {
            env.push(("FORK_BLOCK", block.to_string()));
        }
        env
    };
    let latest = forge.run(
        "forge test --fork-url",
        &["test", "--fork-url", &url],
        &env(None),
    );
    assert_all_passed("forge test --fork-url", &latest);
    let old = forge.run(
        "forge test --fork-block-number",
        &[
            "test",
            "--fork-url",
            &url,
            "--fork-block-number",
            &old_block.to_string(),
        ],
        &env(Some(old_block)),
    );
    assert_all_passed("forge test --fork-block-number", &old);

    let sent = sender.stop(&rt);
    let head = rt
        .block_on(rpc.block_number())
        .expect("eth_blockNumber at the end");
    println!("background sender: {sent} transfers; head moved to block {head}");
    assert!(sent > 0, "the background sender sent nothing");
}

/// forge in tests/foundry (foundry.toml's relative `solc` path is resolved against the working
/// directory), its outputs redirected to a temporary directory.
struct Forge {
    bin: PathBuf,
    project: PathBuf,
    outputs: PathBuf,
}

/// What the broadcast of script/Deploy.s.sol created.
struct Deployments {
    create: Address,
    create2: Address,
    /// The input of the transaction to the CREATE2 deployer.
    create2_input: Vec<u8>,
    /// The block of the script's last transaction.
    last_block: u64,
}

impl Forge {
    /// Runs forge with `args` and `env` (the variables the Solidity reads; any other of them is
    /// removed so the caller's environment cannot leak in); returns its stdout, panics on failure.
    fn run(&self, what: &str, args: &[&str], env: &[(&str, String)]) -> String {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .current_dir(&self.project)
            .env("FOUNDRY_OUT", self.outputs.join("out"))
            .env("FOUNDRY_CACHE_PATH", self.outputs.join("cache"))
            .env("FOUNDRY_BROADCAST", self.outputs.join("broadcast"))
            .env("NO_COLOR", "1");
        for name in [
            "DEPLOY_SALT",
            "COUNTER",
            "SALTED",
            "FORK_URL",
            "FORK_BLOCK",
            "OLD_BLOCK",
            "OLD_NUMBER",
            "NEW_BLOCK",
            "NEW_NUMBER",
        ] {
            command.env_remove(name);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let out = run_captured(what, &mut command, FORGE_TIMEOUT);
        match out.status {
            Some(status) if status.success() => {
                println!("{what}: {:.1} s", out.secs);
                out.stdout
            }
            Some(status) => panic!("{what} failed ({status})\n{}", out.report),
            None => panic!(
                "{what} did not finish within {FORGE_TIMEOUT:?}\n{}",
                out.report
            ),
        }
    }

    /// The CREATE and CREATE2 of the last broadcast of script/Deploy.s.sol, as forge recorded
    /// them; every transaction of it succeeded.
    fn deployments(&self) -> Deployments {
        let (text, run) = read_json(
            &self
                .outputs
                .join(format!("broadcast/Deploy.s.sol/{CHAIN_ID}/run-latest.json")),
        );
        let receipts = run["receipts"].as_array().expect("receipts");
        let transactions = run["transactions"].as_array().expect("transactions");
        assert_eq!(
            receipts.len(),
            transactions.len(),
            "a receipt for each transaction: {text}"
        );
        assert_eq!(
            transactions.len(),
            4,
            "CREATE, CREATE2 and two calls: {text}"
        );
        for receipt in receipts {
            assert_eq!(receipt["status"], "0x1", "a failed transaction: {receipt}");
        }
        let last_block = receipts
            .iter()
            .map(|r| quantity_u64(&r["blockNumber"]))
            .max()
            .expect("receipts");
        let of_type = |kind: &str| -> Value {
            transactions
                .iter()
                .find(|t| t["transactionType"] == kind)
                .cloned()
                .unwrap_or_else(|| panic!("no {kind} transaction in {text}"))
        };
        let address = |v: &Value| -> Address {
            v.as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not an address: {v}"))
        };
        let create2 = of_type("CREATE2");
        assert_eq!(
            address(&create2["transaction"]["to"]),
            CREATE2_DEPLOYER,
            "the CREATE2 goes through the deterministic deployer"
        );
        let input = create2["transaction"]["input"]
            .as_str()
            .or_else(|| create2["transaction"]["data"].as_str())
            .expect("the CREATE2 transaction's input");
        Deployments {
            create: address(&of_type("CREATE")["contractAddress"]),
            create2: address(&create2["contractAddress"]),
            create2_input: alloy::hex::decode(input.trim_start_matches("0x")).expect("hex input"),
            last_block,
        }
    }

    /// A contract's creation code from forge's artifact.
    fn creation_code(&self, contract: &str) -> Vec<u8> {
        let (_, artifact) = read_json(
            &self
                .outputs
                .join(format!("out/{contract}.sol/{contract}.json")),
        );
        let code = artifact["bytecode"]["object"]
            .as_str()
            .expect("bytecode.object");
        alloy::hex::decode(code.trim_start_matches("0x")).expect("hex bytecode")
    }
}

/// A file forge wrote: its text (for failure messages) and its JSON.
fn read_json(path: &std::path::Path) -> (String, Value) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    (text, value)
}

async fn number_at(rpc: &Rpc, counter: Address, block: Value) -> U256 {
    let input = Bytes::from(Counter::numberCall.abi_encode());
    let out = rpc
        .ok(
            "eth_call",
            json!([{ "to": counter, "input": input }, block]),
        )
        .await;
    let out: Bytes = serde_json::from_value(out).expect("call output");
    U256::try_from_be_slice(&out).unwrap_or_else(|| panic!("number() answer {out}"))
}

/// Each test of test/Fork.t.sol ran and passed.
fn assert_all_passed(what: &str, stdout: &str) {
    for test in [
        "test_ForkedState()",
        "test_RevertAndLocalWrite()",
        "test_SelectForkAtOldBlock()",
    ] {
        assert!(
            stdout.contains(&format!("[PASS] {test}")),
            "{what}: {test} did not pass\n{stdout}"
        );
    }
    assert!(!stdout.contains("[FAIL"), "{what}: a test failed\n{stdout}");
}

/// ETH transfers from dev account 2 (forge uses account 0) every 100 ms, so that blocks keep
/// coming while forge reads and forks the chain.
struct BackgroundSender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl BackgroundSender {
    fn start(rt: &tokio::runtime::Runtime, rpc: Rpc) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let task = rt.spawn({
            let (stop, sent) = (stop.clone(), sent.clone());
            async move {
                let signer = dev_signer(2);
                let to = dev_signer(3).address();
                let mut nonce = rpc.nonce(signer.address()).await;
                while !stop.load(Ordering::Relaxed) {
                    let tx = sign(
                        &signer,
                        eip1559(
                            nonce,
                            TxKind::Call(to),
                            U256::from(1u64),
                            Bytes::new(),
                            21_000,
                        ),
                    );
                    let receipt = rpc
                        .send_raw_sync(&tx)
                        .await
                        .map_err(|e| format!("background transfer {nonce}: {e}"))?;
                    if !receipt.succeeded() {
                        return Err(format!("background transfer {nonce} failed: {receipt:?}"));
                    }
                    nonce += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(())
            }
        });
        Self { stop, sent, task }
    }

    /// Stops it; how many transfers it sent. Panics if one failed.
    fn stop(self, rt: &tokio::runtime::Runtime) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        match rt.block_on(self.task) {
            Ok(Ok(())) => self.sent.load(Ordering::Relaxed),
            Ok(Err(e)) => panic!("{e}"),
            Err(e) => panic!("background sender: {e}"),
        }
    }
}
