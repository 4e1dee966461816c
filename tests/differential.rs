//! Differential test against anvil (the reference EVM node, pinned 1.7.1 in package.json).
//!
//! A deterministic list of transactions is signed once; each is sent, byte for byte the same,
//! to anvil and to rtchain with eth_sendRawTransactionSync. Per transaction the two must agree
//! on status, gasUsed, logs (address, topics, data) and the created contract's address; at the
//! end on nonces, code, the token's storage slots and balances, and on the ETH that moved.
//!
//! Fees differ by design: anvil mines one block per transaction while rtchain packs several
//! mini-blocks into a 100 ms EVM block, so their EIP-1559 base fees drift apart. So a sender's
//! balance is compared as "ETH that left it other than fees" (balance drop minus what its own
//! receipts say it paid for gas, on each chain), and accounts that only receive are compared
//! exactly.

mod common;

use std::collections::BTreeMap;

use alloy::{
    consensus::{TxEip2930, TxLegacy},
    eips::eip2930::{AccessList, AccessListItem},
    primitives::{Address, B256, Bytes, TxKind, U256, address, keccak256},
    signers::local::PrivateKeySigner,
    sol_types::SolCall,
};
use common::{
    Anvil, CHAIN_ID, DEV_BALANCE_WEI, Devnet, GWEI, ReceiptFacts, Rpc, SignedTx, Token, dev_signer,
    eip1559, repo_root, sign, token_deploy_input,
};

/// Accounts that exist on neither chain before the test.
const FRESH_A: Address = address!("00000000000000000000000000000000000a11ce");
const FRESH_B: Address = address!("0000000000000000000000000000000000000b0b");
const ETHER: u128 = 1_000_000_000_000_000_000;
/// Token's storage layout (contracts/Token.sol): name, symbol, totalSupply, balanceOf,
/// allowance (`decimals` is a constant).
const SLOT_TOTAL_SUPPLY: u64 = 2;
const SLOT_BALANCE_OF: u64 = 3;
const SLOT_ALLOWANCE: u64 = 4;

/// One transaction of the plan and what it must do on both chains.
struct Step {
    name: &'static str,
    sender: usize,
    tx: SignedTx,
    value_wei: U256,
    to: Option<Address>,
    succeeds: bool,
    /// Logs the transaction must emit (both chains must also agree with each other).
    logs: usize,
}

/// Builds the signed plan. Senders are dev accounts 0..5; nonces count from 0 on both chains.
struct Planner {
    signers: Vec<PrivateKeySigner>,
    nonces: Vec<u64>,
    steps: Vec<Step>,
}

impl Planner {
    fn next_nonce(&mut self, sender: usize) -> u64 {
        let nonce = self.nonces[sender];
        self.nonces[sender] += 1;
        nonce
    }

    #[allow(clippy::too_many_arguments)]
    fn call(
        &mut self,
        name: &'static str,
        sender: usize,
        to: TxKind,
        value: U256,
        input: Vec<u8>,
        gas: u64,
        succeeds: bool,
        logs: usize,
    ) {
        let nonce = self.next_nonce(sender);
        let tx = sign(
            &self.signers[sender],
            eip1559(nonce, to, value, input.into(), gas),
        );
        self.push(name, sender, tx, value, to, succeeds, logs);
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        name: &'static str,
        sender: usize,
        tx: SignedTx,
        value: U256,
        to: TxKind,
        succeeds: bool,
        logs: usize,
    ) {
        self.steps.push(Step {
            name,
            sender,
            tx,
            value_wei: value,
            to: to.to().copied(),
            succeeds,
            logs,
        });
    }

    fn address(&self, sender: usize) -> Address {
        self.signers[sender].address()
    }
}

/// A contract whose every call emits LOG2(topic0 = [`log_topic`], topic1 = caller, data =
/// calldata) and increments storage slot 0. Hand-assembled so that no compiler is involved.
fn log_emitter_initcode() -> Vec<u8> {
    let mut runtime = vec![
        0x36, 0x5f, 0x5f, 0x37, // CALLDATACOPY(0, 0, CALLDATASIZE)
        0x33, // CALLER (topic1)
        0x7f, // PUSH32 topic0
    ];
    runtime.extend_from_slice(log_topic().as_slice());
    runtime.extend_from_slice(&[
        0x36, 0x5f, 0xa2, // LOG2(0, CALLDATASIZE, topic0, caller)
        0x5f, 0x54, 0x60, 0x01, 0x01, 0x5f, 0x55, // SSTORE(0, SLOAD(0) + 1)
        0x00, // STOP
    ]);
    let len = u8::try_from(runtime.len()).expect("runtime fits PUSH1");
    // CODECOPY(0, 10, len); RETURN(0, len): the prefix is 10 bytes.
    let mut initcode = vec![0x60, len, 0x60, 0x0a, 0x5f, 0x39, 0x60, len, 0x5f, 0xf3];
    initcode.extend(runtime);
    initcode
}

fn log_topic() -> B256 {
    keccak256("rtchain.differential.Logged")
}

fn reverter_bytecode() -> Vec<u8> {
    let path = repo_root().join("contracts/out/Reverter.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read Reverter.json"))
            .expect("Reverter.json");
    let code = json["bytecode"]
        .as_str()
        .expect("bytecode")
        .trim_start_matches("0x");
    alloy::hex::decode(code).expect("hex bytecode")
}

fn plan() -> (Planner, Address, Address, Address) {
    let signers: Vec<PrivateKeySigner> = (0..5).map(dev_signer).collect();
    let mut p = Planner {
        nonces: vec![0; signers.len()],
        signers,
        steps: Vec::new(),
    };
    let (a0, a1, a2, a3, a4) = (
        p.address(0),
        p.address(1),
        p.address(2),
        p.address(3),
        p.address(4),
    );

    p.call(
        "ETH transfer (EIP-1559)",
        0,
        TxKind::Call(a1),
        U256::from(3 * ETHER / 2),
        vec![],
        21_000,
        true,
        0,
    );
    let nonce = p.next_nonce(1);
    let legacy = TxLegacy {
        chain_id: Some(CHAIN_ID),
        nonce,
        gas_price: 5 * GWEI,
        gas_limit: 21_000,
        to: TxKind::Call(a2),
        value: U256::from(ETHER / 4),
        input: Bytes::new(),
    };
    p.push(
        "ETH transfer (legacy, EIP-155)",
        1,
        sign(&p.signers[1], legacy),
        U256::from(ETHER / 4),
        TxKind::Call(a2),
        true,
        0,
    );
    p.call(
        "ETH transfer to a new account",
        2,
        TxKind::Call(FRESH_A),
        U256::from(ETHER / 10),
        vec![],
        21_000,
        true,
        0,
    );
    p.call(
        "ETH self-transfer",
        3,
        TxKind::Call(a3),
        U256::from(ETHER),
        vec![],
        21_000,
        true,
        0,
    );
    // EIP-7623 (Prague): 1,000 non-zero calldata bytes cost the floor price, not 16 gas each.
    p.call(
        "ETH transfer with calldata (floor gas)",
        3,
        TxKind::Call(FRESH_A),
        U256::from(7),
        vec![1; 1_000],
        100_000,
        true,
        0,
    );

    let supply = U256::from(1_000_000 * ETHER);
    let token = a0.create(p.nonces[0]);
    p.call(
        "deploy the ERC-20",
        0,
        TxKind::Create,
        U256::ZERO,
        token_deploy_input("Diff", "DF", supply).to_vec(),
        2_000_000,
        true,
        1,
    );
    let transfer = |to: Address, value: u128| {
        Token::transferCall {
            to,
            value: U256::from(value),
        }
        .abi_encode()
    };
    p.call(
        "token transfer 0 -> 1",
        0,
        TxKind::Call(token),
        U256::ZERO,
        transfer(a1, 1_000 * ETHER),
        100_000,
        true,
        1,
    );
    p.call(
        "token transfer 0 -> 2",
        0,
        TxKind::Call(token),
        U256::ZERO,
        transfer(a2, 250 * ETHER),
        100_000,
        true,
        1,
    );
    p.call(
        "token transfer 1 -> 3",
        1,
        TxKind::Call(token),
        U256::ZERO,
        transfer(a3, 400 * ETHER),
        100_000,
        true,
        1,
    );
    p.call(
        "token transfer above balance (reverts)",
        2,
        TxKind::Call(token),
        U256::ZERO,
        transfer(a3, 10_000 * ETHER),
        100_000,
        false,
        0,
    );
    p.call(
        "token transfer to address 0 (reverts)",
        3,
        TxKind::Call(token),
        U256::ZERO,
        transfer(Address::ZERO, 1),
        100_000,
        false,
        0,
    );
    let approve = Token::approveCall {
        spender: a4,
        value: U256::from(5 * ETHER),
    }
    .abi_encode();
    p.call(
        "token approve 0 -> 4",
        0,
        TxKind::Call(token),
        U256::ZERO,
        approve,
        100_000,
        true,
        1,
    );
    let transfer_from = Token::transferFromCall {
        from: a0,
        to: FRESH_B,
        value: U256::from(2 * ETHER),
    }
    .abi_encode();
    p.call(
        "token transferFrom 0 -> new account by 4",
        4,
        TxKind::Call(token),
        U256::ZERO,
        transfer_from,
        100_000,
        true,
        1,
    );
    p.call(
        "ETH to the token (no receive function: reverts)",
        4,
        TxKind::Call(token),
        U256::from(1),
        vec![],
        100_000,
        false,
        0,
    );

    let emitter = a4.create(p.nonces[4]);
    p.call(
        "deploy the log emitter (hand-assembled)",
        4,
        TxKind::Create,
        U256::ZERO,
        log_emitter_initcode(),
        200_000,
        true,
        0,
    );
    p.call(
        "call that emits a log",
        4,
        TxKind::Call(emitter),
        U256::ZERO,
        b"hello".to_vec(),
        100_000,
        true,
        1,
    );
    let nonce = p.next_nonce(1);
    let with_access_list = TxEip2930 {
        chain_id: CHAIN_ID,
        nonce,
        gas_price: 5 * GWEI,
        gas_limit: 100_000,
        to: TxKind::Call(emitter),
        value: U256::ZERO,
        access_list: AccessList(vec![AccessListItem {
            address: emitter,
            storage_keys: vec![B256::ZERO],
        }]),
        input: Bytes::from(vec![0xab; 64]),
    };
    p.push(
        "call that emits a log (EIP-2930 access list)",
        1,
        sign(&p.signers[1], with_access_list),
        U256::ZERO,
        TxKind::Call(emitter),
        true,
        1,
    );
    p.call(
        "call out of gas",
        2,
        TxKind::Call(emitter),
        U256::ZERO,
        vec![],
        21_100,
        false,
        0,
    );
    // Initcode REVERT(0, 0): a creation that fails.
    p.call(
        "failing contract creation",
        3,
        TxKind::Create,
        U256::ZERO,
        vec![0x5f, 0x5f, 0xfd],
        100_000,
        false,
        0,
    );
    let reverter = a4.create(p.nonces[4]);
    p.call(
        "deploy Reverter",
        4,
        TxKind::Create,
        U256::ZERO,
        reverter_bytecode(),
        1_000_000,
        true,
        0,
    );
    // alwaysRevert()
    p.call(
        "call that reverts with a reason",
        0,
        TxKind::Call(reverter),
        U256::ZERO,
        keccak256("alwaysRevert()")[..4].to_vec(),
        100_000,
        false,
        0,
    );
    // A salted deployment through the CREATE2 deployer both chains preinstall.
    let mut salted = CREATE2_SALT.to_vec();
    salted.extend(log_emitter_initcode());
    p.call(
        "deploy the log emitter through the CREATE2 deployer",
        1,
        TxKind::Call(CREATE2_DEPLOYER),
        U256::ZERO,
        salted,
        200_000,
        true,
        0,
    );
    (p, token, emitter, reverter)
}

const CREATE2_DEPLOYER: Address = address!("4e59b44847b379578588920cA78FbF26c0B4956C");
const CREATE2_SALT: [u8; 32] = [0x5a; 32];

fn create2_emitter() -> Address {
    CREATE2_DEPLOYER.create2(CREATE2_SALT, keccak256(log_emitter_initcode()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_transactions_same_results_as_anvil() {
    let anvil = Anvil::start(&[
        "--chain-id",
        &CHAIN_ID.to_string(),
        "--hardfork",
        "prague",
        "--base-fee",
        &GWEI.to_string(),
        "--quiet",
        // Without it anvil answers the struct logger with no steps.
        "--steps-tracing",
    ]);
    let node = Devnet::start(&[]);
    let chains = [
        ("anvil", Rpc::new(&anvil.url())),
        ("rtchain", Rpc::new(&node.url())),
    ];
    let (planner, token, emitter, reverter) = plan();
    let senders: Vec<Address> = planner.signers.iter().map(|s| s.address()).collect();

    for (name, rpc) in &chains {
        let id = rpc.ok("eth_chainId", serde_json::json!([])).await;
        assert_eq!(common::quantity_u64(&id), CHAIN_ID, "{name}: chain id");
        for sender in &senders {
            assert_eq!(
                rpc.balance(*sender).await,
                U256::from(DEV_BALANCE_WEI),
                "{name}: genesis balance of {sender}"
            );
        }
    }

    let mut failures: Vec<String> = Vec::new();
    // Fees each sender paid, per chain.
    let mut fees: [BTreeMap<usize, U256>; 2] = [BTreeMap::new(), BTreeMap::new()];
    let mut created: Vec<Address> = Vec::new();
    for (i, step) in planner.steps.iter().enumerate() {
        let mut receipts: Vec<ReceiptFacts> = Vec::new();
        for (c, (chain, rpc)) in chains.iter().enumerate() {
            let receipt = match rpc.send_raw_sync(&step.tx).await {
                Ok(r) => r,
                Err(e) => panic!(
                    "step {i} ({}): {chain} refused the transaction: {e}",
                    step.name
                ),
            };
            assert_eq!(
                receipt.transaction_hash, step.tx.hash,
                "step {i}: {chain} answered another transaction's receipt"
            );
            *fees[c].entry(step.sender).or_default() += receipt.fee_wei();
            receipts.push(receipt);
        }
        let (a, r) = (&receipts[0], &receipts[1]);
        let mut diff = |what: &str, anvil: String, rtchain: String| {
            if anvil != rtchain {
                failures.push(format!(
                    "step {i} ({}): {what}: anvil {anvil}, rtchain {rtchain}",
                    step.name
                ));
            }
        };
        diff("status", a.status.to_string(), r.status.to_string());
        diff("gasUsed", a.gas_used.to_string(), r.gas_used.to_string());
        diff(
            "logs",
            format!("{:?}", a.log_contents()),
            format!("{:?}", r.log_contents()),
        );
        if a.succeeded() {
            diff(
                "contractAddress",
                format!("{:?}", a.contract_address),
                format!("{:?}", r.contract_address),
            );
        }
        if a.succeeded() != step.succeeds || a.logs.len() != step.logs {
            failures.push(format!(
                "step {i} ({}): the plan expects success={} with {} logs; anvil says status {} with {} logs (plan or reference wrong)",
                step.name,
                step.succeeds,
                step.logs,
                a.status,
                a.logs.len()
            ));
        }
        if let Some(address) = r.contract_address.filter(|_| r.succeeded()) {
            created.push(address);
        }
        // rtchain's receipt once its block is sealed says the same as the preconfirmed one.
        let sealed = chains[1]
            .1
            .wait_receipt(step.tx.hash, std::time::Duration::from_secs(10))
            .await;
        if (
            sealed.status,
            sealed.gas_used,
            sealed.log_contents(),
            sealed.block_number,
        ) != (r.status, r.gas_used, r.log_contents(), r.block_number)
        {
            failures.push(format!("step {i} ({}): rtchain's sealed receipt {sealed:?} differs from its preconfirmed {r:?}", step.name));
        }
        println!(
            "step {i:2} {:<52} status {} gas {:>7} logs {} (anvil gas {})",
            step.name,
            r.status,
            r.gas_used,
            r.logs.len(),
            a.gas_used
        );
    }
    assert_eq!(
        created,
        vec![token, emitter, reverter],
        "contracts created on rtchain"
    );

    // Nonces and code.
    for (name, rpc) in &chains {
        for (i, sender) in senders.iter().enumerate() {
            let nonce = rpc.nonce(*sender).await;
            if nonce != planner.nonces[i] {
                failures.push(format!(
                    "{name}: nonce of {sender} is {nonce}, {} transactions were sent",
                    planner.nonces[i]
                ));
            }
        }
    }
    for address in [
        token,
        emitter,
        reverter,
        FRESH_A,
        FRESH_B,
        senders[3].create(planner.nonces[3] - 1),
        CREATE2_DEPLOYER,
        create2_emitter(),
    ] {
        let (a, r) = (
            chains[0].1.code(address).await,
            chains[1].1.code(address).await,
        );
        if a != r {
            failures.push(format!(
                "code at {address}: anvil {} bytes, rtchain {} bytes",
                a.len(),
                r.len()
            ));
        }
    }
    for address in [CREATE2_DEPLOYER, create2_emitter()] {
        assert!(
            !chains[1].1.code(address).await.is_empty(),
            "rtchain has no code at {address}"
        );
    }

    // ETH: receivers exactly; senders by what left them other than fees.
    let mut moved: BTreeMap<Address, i128> = BTreeMap::new();
    for step in &planner.steps {
        if step.succeeds
            && let Some(to) = step.to
        {
            let value = i128::try_from(step.value_wei).expect("small value");
            *moved.entry(senders[step.sender]).or_default() -= value;
            *moved.entry(to).or_default() += value;
        }
    }
    for address in [FRESH_A, FRESH_B, token, emitter, reverter] {
        let expected = U256::from(moved.get(&address).copied().unwrap_or_default().max(0));
        for (name, rpc) in &chains {
            let balance = rpc.balance(address).await;
            if balance != expected {
                failures.push(format!(
                    "{name}: balance of {address} is {balance}, expected {expected}"
                ));
            }
        }
    }
    for (i, sender) in senders.iter().enumerate() {
        let expected_net = moved.get(sender).copied().unwrap_or_default();
        for (c, (name, rpc)) in chains.iter().enumerate() {
            let balance = rpc.balance(*sender).await;
            let fee = fees[c].get(&i).copied().unwrap_or_default();
            let net = i128::try_from(balance + fee).expect("fits")
                - i128::try_from(DEV_BALANCE_WEI).expect("fits");
            if net != expected_net {
                failures.push(format!(
                    "{name}: {sender} ends with {balance} after {fee} in fees: net {net} wei, expected {expected_net}"
                ));
            }
        }
    }

    // The token: balances through the contract and straight from storage, allowance, supply.
    let holders = [
        senders[0], senders[1], senders[2], senders[3], senders[4], FRESH_B,
    ];
    let expected_tokens = [
        1_000_000 * ETHER - 1_000 * ETHER - 250 * ETHER - 2 * ETHER,
        600 * ETHER,
        250 * ETHER,
        400 * ETHER,
        0,
        2 * ETHER,
    ];
    for (holder, expected) in holders.iter().zip(expected_tokens) {
        let slot = keccak256((holder.into_word(), U256::from(SLOT_BALANCE_OF)).abi_encode_pair());
        let mut words = Vec::new();
        for (name, rpc) in &chains {
            let balance = rpc.token_balance(token, *holder).await;
            let word = rpc.storage(token, slot).await;
            if balance != U256::from(expected) || U256::from_be_bytes(word.0) != balance {
                failures.push(format!("{name}: token balance of {holder}: balanceOf {balance}, slot {word}, expected {expected}"));
            }
            words.push(word);
        }
        if words[0] != words[1] {
            failures.push(format!(
                "token balance slot of {holder}: anvil {}, rtchain {}",
                words[0], words[1]
            ));
        }
    }
    let inner = keccak256((senders[0].into_word(), U256::from(SLOT_ALLOWANCE)).abi_encode_pair());
    let allowance_slot = keccak256((senders[4].into_word(), inner).abi_encode_pair());
    let slots = [
        (token, B256::ZERO, "token name"),
        (token, B256::with_last_byte(1), "token symbol"),
        (
            token,
            B256::from(U256::from(SLOT_TOTAL_SUPPLY)),
            "token totalSupply",
        ),
        (token, allowance_slot, "allowance[0][4]"),
        (emitter, B256::ZERO, "log emitter counter"),
    ];
    let expected_slots = [
        None,
        None,
        Some(U256::from(1_000_000 * ETHER)),
        Some(U256::from(3 * ETHER)),
        Some(U256::from(2)),
    ];
    for ((address, slot, what), expected) in slots.into_iter().zip(expected_slots) {
        let (a, r) = (
            chains[0].1.storage(address, slot).await,
            chains[1].1.storage(address, slot).await,
        );
        if a != r {
            failures.push(format!(
                "{what} (slot {slot} of {address}): anvil {a}, rtchain {r}"
            ));
        }
        if let Some(expected) = expected
            && U256::from_be_bytes(r.0) != expected
        {
            failures.push(format!("{what}: rtchain {r}, expected {expected}"));
        }
    }

    // Traces: the same transaction on the same state traces the same on both, with geth's
    // tracers as anvil implements them.
    let mut stepped = 0;
    for (i, step) in planner.steps.iter().enumerate() {
        for (tracer, options) in trace_options() {
            let mut answers = Vec::new();
            for (chain, rpc) in &chains {
                match rpc
                    .call(
                        "debug_traceTransaction",
                        serde_json::json!([step.tx.hash, options]),
                    )
                    .await
                {
                    Ok(trace) => answers.push(comparable_trace(tracer, trace)),
                    Err(e) => {
                        failures.push(format!("step {i} ({}): {chain} {tracer}: {e}", step.name));
                        answers.push(serde_json::Value::Null);
                    }
                }
            }
            if tracer == "structLogger"
                && answers[1]["structLogs"]
                    .as_array()
                    .is_some_and(|s| !s.is_empty())
            {
                stepped += 1;
            }
            if answers[0] != answers[1] {
                failures.push(format!(
                    "step {i} ({}): {tracer} differs:\n  anvil   {}\n  rtchain {}",
                    step.name,
                    first_difference(&answers[0], &answers[1]).0,
                    first_difference(&answers[0], &answers[1]).1,
                ));
            }
        }
    }
    // Most steps run code: the comparison is not of empty traces.
    assert!(stepped > 10, "only {stepped} steps have opcode traces");

    // debug_traceCall: a call that reverts with a reason, on both, at the newest state.
    let data = Bytes::copy_from_slice(&keccak256("alwaysRevert()")[..4]);
    let call =
        serde_json::json!({"from": senders[0], "to": reverter, "data": data, "gas": "0x30000"});
    let mut answers = Vec::new();
    for (chain, rpc) in &chains {
        let options = serde_json::json!({"tracer": "callTracer"});
        match rpc
            .call(
                "debug_traceCall",
                serde_json::json!([call, "latest", options]),
            )
            .await
        {
            Ok(trace) => answers.push(comparable_trace("callTracer", trace)),
            Err(e) => panic!("{chain} debug_traceCall: {e}"),
        }
    }
    assert_eq!(
        answers[0], answers[1],
        "debug_traceCall differs (anvil, rtchain)"
    );
    assert!(
        answers[1]["error"].is_string(),
        "the call reverts: {}",
        answers[1]
    );

    // debug_traceBlockByNumber answers each transaction of the block as debug_traceTransaction.
    let last = planner.steps.last().expect("a plan");
    let sealed = chains[1]
        .1
        .wait_receipt(last.tx.hash, std::time::Duration::from_secs(10))
        .await;
    let number = format!("{:#x}", sealed.block_number.expect("sealed"));
    let options = serde_json::json!({"tracer": "callTracer"});
    let block = chains[1]
        .1
        .ok(
            "debug_traceBlockByNumber",
            serde_json::json!([number, options]),
        )
        .await;
    let entry = block
        .as_array()
        .and_then(|traces| {
            traces
                .iter()
                .find(|t| t["txHash"] == serde_json::json!(last.tx.hash))
        })
        .unwrap_or_else(|| panic!("block {number} traces lack {}: {block}", last.tx.hash));
    let single = chains[1]
        .1
        .ok(
            "debug_traceTransaction",
            serde_json::json!([last.tx.hash, options]),
        )
        .await;
    assert_eq!(entry["result"], single);

    assert!(
        failures.is_empty(),
        "rtchain and anvil disagree:\n{}",
        failures.join("\n")
    );
}

/// The tracers compared with anvil, and their options as a client sends them.
fn trace_options() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (
            "structLogger",
            serde_json::json!({"enableMemory": true, "enableReturnData": true}),
        ),
        (
            "callTracer",
            serde_json::json!({"tracer": "callTracer", "tracerConfig": {"withLog": true}}),
        ),
        (
            "prestateTracer",
            serde_json::json!({"tracer": "prestateTracer"}),
        ),
        (
            "prestateTracer diffMode",
            serde_json::json!({"tracer": "prestateTracer", "tracerConfig": {"diffMode": true}}),
        ),
    ]
}

/// A trace without what differs by design: balances (the chains' base fees differ, so every
/// sender and coinbase balance does), the fee recipient (anvil's coinbase is not rtchain's),
/// and the callTracer's top-level `gas`, which geth sets to the transaction's gas limit (as
/// rtchain does) and anvil 1.7.1 to the gas left after the intrinsic cost.
fn comparable_trace(tracer: &str, mut trace: serde_json::Value) -> serde_json::Value {
    if tracer == "callTracer"
        && let Some(frame) = trace.as_object_mut()
    {
        frame.remove("gas");
    }
    if tracer.starts_with("prestateTracer") {
        let strip = |accounts: &mut serde_json::Value| {
            if let Some(map) = accounts.as_object_mut() {
                map.retain(|address, _| address != "0x0000000000000000000000000000000000000000");
                for account in map.values_mut() {
                    if let Some(a) = account.as_object_mut() {
                        a.remove("balance");
                    }
                }
                // An account left with nothing to compare says only "touched".
                map.retain(|_, account| account.as_object().is_none_or(|a| !a.is_empty()));
            }
        };
        if trace.get("pre").is_some() {
            strip(&mut trace["pre"]);
            strip(&mut trace["post"]);
        } else {
            strip(&mut trace);
        }
    }
    trace
}

/// The first place two JSON values differ, shown from each side.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value) -> (String, String) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let (u, v) = (x.get(key), y.get(key));
                if u != v {
                    return match (u, v) {
                        (Some(u), Some(v)) => {
                            let (p, q) = first_difference(u, v);
                            (format!("{key}: {p}"), format!("{key}: {q}"))
                        }
                        _ => (
                            format!("{key}: {}", u.map_or("absent".into(), |u| u.to_string())),
                            format!("{key}: {}", v.map_or("absent".into(), |v| v.to_string())),
                        ),
                    };
                }
            }
            (String::new(), String::new())
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                if u != v {
                    let (p, q) = first_difference(u, v);
                    return (format!("[{i}] {p}"), format!("[{i}] {q}"));
                }
            }
            (String::new(), String::new())
        }
        _ => (
            a.to_string().chars().take(400).collect(),
            b.to_string().chars().take(400).collect(),
        ),
    }
}

/// ABI encoding of two words, as Solidity's mapping slots hash them.
trait PairEncode {
    fn abi_encode_pair(&self) -> Vec<u8>;
}

impl PairEncode for (B256, U256) {
    fn abi_encode_pair(&self) -> Vec<u8> {
        let mut out = self.0.to_vec();
        out.extend_from_slice(&self.1.to_be_bytes::<32>());
        out
    }
}

impl PairEncode for (B256, B256) {
    fn abi_encode_pair(&self) -> Vec<u8> {
        let mut out = self.0.to_vec();
        out.extend_from_slice(self.1.as_slice());
        out
    }
}
