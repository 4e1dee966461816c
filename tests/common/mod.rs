//! Test harness: real `rtchain devnet` processes on loopback, killed on drop.
#![allow(dead_code)]

pub mod tools;

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use alloy::{
    consensus::{SignableTransaction, Signed, TxEip1559, TxEnvelope},
    eips::eip2718::Encodable2718,
    network::TxSignerSync,
    primitives::{Address, B256, Bytes, Signature, TxKind, U256, keccak256},
    signers::local::{MnemonicBuilder, PrivateKeySigner, coins_bip39::English},
};

/// Dev account 0 of the test mnemonic (funded in the dev genesis, as in anvil).
pub const DEV_KEY_0: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
pub const DEV_KEY_1: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
pub const DEV_KEY_2: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
pub const CHAIN_ID: u64 = 31337;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A free loopback port (bound and released; the node binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running devnet. Dropping it kills the process.
pub struct Devnet {
    pub child: Child,
    pub port: u16,
    /// The UDP fast path's address, as the node printed it.
    pub fastpath: Option<std::net::SocketAddr>,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Devnet {
    /// Starts a devnet with a fresh data directory.
    pub fn start(extra: &[&str]) -> Self {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().join("data");
        let mut node = Self::start_in(&dir, extra);
        node._temp = Some(temp);
        node
    }

    /// Starts (or restarts) a devnet on `data_dir`.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_on(data_dir, free_port(), extra)
    }

    pub fn start_on(data_dir: &Path, port: u16, extra: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rtchain"));
        command
            .arg("devnet")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--rpc-addr")
            .arg(format!("127.0.0.1:{port}"));
        // Tests run side by side: each node's fast path takes an ephemeral port unless the test
        // chooses one.
        if !extra.contains(&"--fastpath-addr") {
            command.arg("--fastpath-addr").arg("127.0.0.1:0");
        }
        // Settlement has tests of its own (tests/l1.rs): the others run without an L1.
        if !extra.iter().any(|a| a.starts_with("--l1")) {
            command.arg("--no-l1");
        }
        command.args(extra);
        Self::spawn(command, data_dir, port)
    }

    /// Starts (or restarts) `rtchain node --config` on `data_dir` with the dev genesis, RPC on
    /// `port`, and `sections` (TOML, e.g. "[storage]\nminilog_size_bytes = 1048576")
    /// for what devnet has no flag for. The config is written next to `data_dir`.
    pub fn start_node_config(data_dir: &Path, port: u16, sections: &str) -> Self {
        let fastpath = if sections.contains("[fastpath]") {
            ""
        } else {
            "[fastpath]\nlisten = \"127.0.0.1:0\"\n"
        };
        let sections = format!("{sections}\n{fastpath}");
        let config = format!(
            "data_dir = {:?}\n\n[rpc]\naddr = \"127.0.0.1:{port}\"\n\n{sections}\n",
            data_dir.display().to_string()
        );
        let path = data_dir.with_extension("toml");
        std::fs::write(&path, config).expect("write the node config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_rtchain"));
        command.arg("node").arg("--config").arg(&path);
        Self::spawn(command, data_dir, port)
    }

    /// Starts (or restarts) `rtchain node --config FILE` with a config written elsewhere (a
    /// cluster validator's), serving RPC on `port`.
    pub fn start_config_file(config: &Path, data_dir: &Path, port: u16) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_rtchain"));
        command.arg("node").arg("--config").arg(config);
        Self::spawn(command, data_dir, port)
    }

    /// SIGSTOP or SIGCONT.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a valid pid of our own child and a standard signal.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    fn spawn(mut command: Command, data_dir: &Path, port: u16) -> Self {
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn rtchain");
        // The node prints its RPC URL once it serves.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            let mut fastpath = None;
            while let Some(Ok(line)) = lines.next() {
                // Printed before the RPC line.
                if let Some(addr) = line.strip_prefix("Fast path: udp://") {
                    fastpath = addr.split_whitespace().next().and_then(|a| a.parse().ok());
                }
                if !sent && line.starts_with("RPC: ") {
                    let _ = tx.send(fastpath);
                    sent = true;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let fastpath;
        loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(100)) {
                fastpath = addr;
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("rtchain exited during start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "rtchain did not start within 60 s"
            );
        }
        Self {
            child,
            port,
            fastpath,
            data_dir: data_dir.to_owned(),
            _temp: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) with a valid pid of our own child and a standard signal.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().expect("wait for rtchain")
    }
}

impl Drop for Devnet {
    /// SIGTERM first: a devnet that started its own anvil stops it on the way out, where a
    /// SIGKILL would leave that anvil running. SIGKILL if it has not exited within 10 s.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: kill(2) with a valid pid of our own, not yet reaped, child and a standard
        // signal.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raw JSON-RPC over HTTP, for tests that need the exact error object.
pub async fn raw_rpc(url: &str, body: &str) -> serde_json::Value {
    let client = reqwest_lite::Client::new();
    client.post(url, body).await
}

/// A tiny HTTP/1.1 client over tokio, enough for JSON-RPC POSTs (no extra dependency).
pub mod reqwest_lite {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    pub struct Client;

    impl Client {
        pub fn new() -> Self {
            Self
        }

        pub async fn post(&self, url: &str, body: &str) -> serde_json::Value {
            let (status, text) = self.post_raw(url, body).await;
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("HTTP {status}: not JSON ({e}): {text}"))
        }

        /// Returns the status code and the body.
        pub async fn post_raw(&self, url: &str, body: &str) -> (u16, String) {
            let host = url.trim_start_matches("http://").trim_end_matches('/');
            let mut stream = TcpStream::connect(host).await.expect("connect");
            let request = format!(
                "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await.expect("read");
            let text = String::from_utf8_lossy(&response).to_string();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let body = if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
            {
                dechunk(body)
            } else {
                body.to_string()
            };
            (status, body)
        }
    }

    fn dechunk(mut body: &str) -> String {
        let mut out = String::new();
        while let Some((size, rest)) = body.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || rest.len() < n {
                break;
            }
            out.push_str(&rest[..n]);
            body = rest[n..].trim_start_matches("\r\n");
        }
        out
    }
}

/// The compiled ERC-20 artifact (contracts/out/Token.json): ABI JSON and creation bytecode.
pub fn token_artifact() -> (serde_json::Value, Vec<u8>) {
    let path = repo_root().join("contracts/out/Token.json");
    let text = std::fs::read_to_string(&path).expect("read Token.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("Token.json");
    let code = json["bytecode"]
        .as_str()
        .expect("bytecode")
        .trim_start_matches("0x")
        .to_string();
    (
        json["abi"].clone(),
        alloy::hex::decode(code).expect("hex bytecode"),
    )
}

/// Path of a tool installed by scripts/setup.sh under node_modules/.bin.
pub fn node_bin(name: &str) -> PathBuf {
    repo_root().join("node_modules/.bin").join(name)
}

// -------------------------------------------------------------------------------------------
// Added for the crash, differential, bad-input and client tests.

/// The dev mnemonic (anvil's and the dev genesis's): account `i` is m/44'/60'/0'/0/i.
pub const DEV_MNEMONIC: &str = "test test test test test test test test test test test junk";
/// Every dev account starts with 10,000 ETH on both rtchain and anvil.
pub const DEV_BALANCE_WEI: u128 = 10_000 * 1_000_000_000_000_000_000;
pub const GWEI: u128 = 1_000_000_000;

/// Dev account `index` (0..10) of [`DEV_MNEMONIC`].
pub fn dev_signer(index: u32) -> PrivateKeySigner {
    MnemonicBuilder::<English>::default()
        .phrase(DEV_MNEMONIC)
        .index(index)
        .and_then(|b| b.build())
        .unwrap_or_else(|e| panic!("dev account {index}: {e}"))
}

/// A signed transaction: the exact bytes sent, and their hash.
#[derive(Debug, Clone)]
pub struct SignedTx {
    pub raw: Bytes,
    pub hash: B256,
}

/// Signs `tx` with `signer` and encodes it (EIP-2718).
pub fn sign<T>(signer: &PrivateKeySigner, mut tx: T) -> SignedTx
where
    T: SignableTransaction<Signature>,
    Signed<T>: Into<TxEnvelope>,
{
    let signature = signer
        .sign_transaction_sync(&mut tx)
        .expect("sign transaction");
    let envelope: TxEnvelope = tx.into_signed(signature).into();
    let raw = envelope.encoded_2718();
    SignedTx {
        hash: keccak256(&raw),
        raw: raw.into(),
    }
}

/// An EIP-1559 transaction with fees every test chain accepts: a 100 gwei cap (far above
/// rtchain's and anvil's base fee, which start at 1 gwei and only fall under light load) and a
/// 1 gwei tip.
pub fn eip1559(nonce: u64, to: TxKind, value: U256, input: Bytes, gas_limit: u64) -> TxEip1559 {
    TxEip1559 {
        chain_id: CHAIN_ID,
        nonce,
        gas_limit,
        max_fee_per_gas: 100 * GWEI,
        max_priority_fee_per_gas: GWEI,
        to,
        value,
        access_list: Default::default(),
        input,
    }
}

// The ERC-20 of contracts/out/Token.json (name, symbol, initialSupply minted to the deployer).
alloy::sol!(Token, "contracts/out/Token.json");

/// Creation input of the Token: bytecode followed by the ABI-encoded constructor arguments.
pub fn token_deploy_input(name: &str, symbol: &str, supply: U256) -> Bytes {
    use alloy::sol_types::SolValue;
    let (_, mut code) = token_artifact();
    code.extend((name.to_owned(), symbol.to_owned(), supply).abi_encode_params());
    code.into()
}

/// Why a JSON-RPC call gave no result.
#[derive(Debug, Clone, PartialEq)]
pub enum RpcFailure {
    /// The server answered a JSON-RPC error object.
    Error {
        code: i64,
        message: String,
        data: Option<serde_json::Value>,
    },
    /// No JSON-RPC answer: connection refused or reset, timeout, a body that is not JSON-RPC.
    Transport(String),
}

impl std::fmt::Display for RpcFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Error {
                code,
                message,
                data,
            } => write!(f, "error {code}: {message} (data {data:?})"),
            Self::Transport(e) => write!(f, "transport: {e}"),
        }
    }
}

/// A JSON-RPC client over HTTP (alloy's reqwest) that keeps error objects exact and supports
/// batches. Every request has a 30 s timeout so that a hung node fails the test instead of
/// hanging it.
#[derive(Clone)]
pub struct Rpc {
    pub url: String,
    client: alloy::transports::http::reqwest::Client,
}

/// Most calls one batch may carry (rtchain's default `max_batch_len`).
pub const BATCH_LEN_MAX: usize = 100;

impl Rpc {
    pub fn new(url: &str) -> Self {
        let client = alloy::transports::http::reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        Self {
            url: url.to_owned(),
            client,
        }
    }

    async fn post(&self, body: &serde_json::Value) -> Result<serde_json::Value, RpcFailure> {
        let response = self
            .client
            .post(&self.url)
            .json(body)
            .send()
            .await
            .map_err(|e| RpcFailure::Transport(e.to_string()))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| RpcFailure::Transport(e.to_string()))?;
        serde_json::from_str(&text)
            .map_err(|e| RpcFailure::Transport(format!("HTTP {status}: {e}: {text}")))
    }

    fn unpack(answer: serde_json::Value) -> Result<serde_json::Value, RpcFailure> {
        if let Some(error) = answer.get("error") {
            return Err(RpcFailure::Error {
                code: error["code"].as_i64().unwrap_or_default(),
                message: error["message"].as_str().unwrap_or_default().to_owned(),
                data: error.get("data").cloned(),
            });
        }
        match answer.get("result") {
            Some(result) => Ok(result.clone()),
            None => Err(RpcFailure::Transport(format!(
                "neither result nor error: {answer}"
            ))),
        }
    }

    pub async fn call(
        &self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, RpcFailure> {
        let body =
            serde_json::json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
        Self::unpack(self.post(&body).await?)
    }

    /// A call that must succeed.
    pub async fn ok(&self, method: &str, params: serde_json::Value) -> serde_json::Value {
        match self.call(method, params.clone()).await {
            Ok(v) => v,
            Err(e) => panic!("{method} {params} at {}: {e}", self.url),
        }
    }

    /// Many calls, in batches of at most [`BATCH_LEN_MAX`]; answers in the order asked.
    pub async fn batch(
        &self,
        calls: &[(&str, serde_json::Value)],
    ) -> Result<Vec<Result<serde_json::Value, RpcFailure>>, RpcFailure> {
        let mut out = Vec::with_capacity(calls.len());
        for chunk in calls.chunks(BATCH_LEN_MAX) {
            let body: Vec<serde_json::Value> = chunk
                .iter()
                .enumerate()
                .map(|(id, (method, params))| serde_json::json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))
                .collect();
            let answer = self.post(&serde_json::Value::Array(body)).await?;
            let Some(answers) = answer.as_array() else {
                return Err(Self::unpack(answer)
                    .err()
                    .unwrap_or(RpcFailure::Transport("batch answer is not an array".into())));
            };
            let mut by_id: Vec<Option<Result<serde_json::Value, RpcFailure>>> =
                vec![None; chunk.len()];
            for a in answers {
                let id = a["id"]
                    .as_u64()
                    .and_then(|id| usize::try_from(id).ok())
                    .filter(|id| *id < chunk.len());
                let Some(id) = id else {
                    return Err(RpcFailure::Transport(format!(
                        "batch answer with a bad id: {a}"
                    )));
                };
                by_id[id] = Some(Self::unpack(a.clone()));
            }
            for (i, answer) in by_id.into_iter().enumerate() {
                out.push(answer.ok_or_else(|| {
                    RpcFailure::Transport(format!("batch answer lacks call {i}"))
                })?);
            }
        }
        Ok(out)
    }

    pub async fn block_number(&self) -> Result<u64, RpcFailure> {
        Ok(quantity_u64(
            &self.call("eth_blockNumber", serde_json::json!([])).await?,
        ))
    }

    pub async fn balance(&self, address: Address) -> U256 {
        quantity(
            &self
                .ok("eth_getBalance", serde_json::json!([address, "latest"]))
                .await,
        )
    }

    pub async fn nonce(&self, address: Address) -> u64 {
        quantity_u64(
            &self
                .ok(
                    "eth_getTransactionCount",
                    serde_json::json!([address, "latest"]),
                )
                .await,
        )
    }

    pub async fn storage(&self, address: Address, slot: B256) -> B256 {
        let v = self
            .ok(
                "eth_getStorageAt",
                serde_json::json!([address, slot, "latest"]),
            )
            .await;
        serde_json::from_value(v).expect("storage word")
    }

    pub async fn code(&self, address: Address) -> Bytes {
        serde_json::from_value(
            self.ok("eth_getCode", serde_json::json!([address, "latest"]))
                .await,
        )
        .expect("code")
    }

    /// eth_call against the newest state.
    pub async fn eth_call(&self, to: Address, input: Bytes) -> Bytes {
        let v = self
            .ok(
                "eth_call",
                serde_json::json!([{ "to": to, "input": input }, "latest"]),
            )
            .await;
        serde_json::from_value(v).expect("call output")
    }

    pub async fn send_raw(&self, tx: &SignedTx) -> Result<B256, RpcFailure> {
        let v = self
            .call("eth_sendRawTransaction", serde_json::json!([tx.raw]))
            .await?;
        serde_json::from_value(v).map_err(|e| RpcFailure::Transport(format!("tx hash: {e}")))
    }

    /// EIP-7966: the receipt as soon as the transaction executed.
    pub async fn send_raw_sync(&self, tx: &SignedTx) -> Result<ReceiptFacts, RpcFailure> {
        let v = self
            .call("eth_sendRawTransactionSync", serde_json::json!([tx.raw]))
            .await?;
        ReceiptFacts::parse(&v).map_err(RpcFailure::Transport)
    }

    /// eth_getTransactionReceipt (`None`: null).
    pub async fn receipt(&self, hash: B256) -> Result<Option<ReceiptFacts>, RpcFailure> {
        let v = self
            .call("eth_getTransactionReceipt", serde_json::json!([hash]))
            .await?;
        if v.is_null() {
            return Ok(None);
        }
        ReceiptFacts::parse(&v)
            .map(Some)
            .map_err(RpcFailure::Transport)
    }

    /// Polls eth_getTransactionReceipt until the receipt is there (of a sealed block).
    pub async fn wait_receipt(&self, hash: B256, timeout: Duration) -> ReceiptFacts {
        wait_for(
            &format!("the receipt of {hash} at {}", self.url),
            timeout,
            || async move {
                match self.receipt(hash).await {
                    Ok(r) => r.filter(|r| r.block_hash.is_some()),
                    Err(e) => panic!("eth_getTransactionReceipt {hash}: {e}"),
                }
            },
        )
        .await
    }

    /// ERC-20 `balanceOf` through eth_call.
    pub async fn token_balance(&self, token: Address, holder: Address) -> U256 {
        use alloy::sol_types::SolCall;
        let out = self
            .eth_call(token, Token::balanceOfCall(holder).abi_encode().into())
            .await;
        U256::try_from_be_slice(&out).unwrap_or_else(|| panic!("balanceOf answer {out}"))
    }
}

/// A hex quantity ("0x1f") as U256; panics on anything else.
pub fn quantity(v: &serde_json::Value) -> U256 {
    let s = v.as_str().unwrap_or_else(|| panic!("not a quantity: {v}"));
    U256::from_str_radix(s.trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("quantity {s}: {e}"))
}

pub fn quantity_u64(v: &serde_json::Value) -> u64 {
    quantity(v)
        .try_into()
        .unwrap_or_else(|_| panic!("quantity {v} does not fit u64"))
}

/// The receipt fields the tests compare, parsed from either a standard receipt or an
/// eth_sendRawTransactionSync answer (which adds `miniBlockNumber` and `preconfirmed`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptFacts {
    pub transaction_hash: B256,
    #[serde(with = "alloy::serde::quantity")]
    pub status: u64,
    #[serde(with = "alloy::serde::quantity")]
    pub gas_used: u64,
    #[serde(with = "alloy::serde::quantity")]
    pub cumulative_gas_used: u64,
    #[serde(with = "alloy::serde::quantity")]
    pub effective_gas_price: u128,
    #[serde(default, with = "alloy::serde::quantity::opt")]
    pub block_number: Option<u64>,
    #[serde(default)]
    pub block_hash: Option<B256>,
    #[serde(default, with = "alloy::serde::quantity::opt")]
    pub transaction_index: Option<u64>,
    #[serde(default)]
    pub contract_address: Option<Address>,
    pub from: Address,
    pub logs: Vec<LogFacts>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogFacts {
    pub address: Address,
    pub topics: Vec<B256>,
    pub data: Bytes,
    #[serde(default, with = "alloy::serde::quantity::opt")]
    pub log_index: Option<u64>,
}

impl ReceiptFacts {
    pub fn parse(v: &serde_json::Value) -> Result<Self, String> {
        serde_json::from_value(v.clone()).map_err(|e| format!("receipt {v}: {e}"))
    }

    pub fn succeeded(&self) -> bool {
        self.status == 1
    }

    /// What the sender paid for gas.
    pub fn fee_wei(&self) -> U256 {
        U256::from(self.gas_used) * U256::from(self.effective_gas_price)
    }

    /// (address, topics, data) of each log: what two chains executing the same transaction
    /// must agree on whatever else sits in their blocks.
    pub fn log_contents(&self) -> Vec<(Address, Vec<B256>, Bytes)> {
        self.logs
            .iter()
            .map(|l| (l.address, l.topics.clone(), l.data.clone()))
            .collect()
    }
}

/// Polls `probe` until it gives a value; panics naming `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `rtchain verify-state --data-dir D` on a stopped node's data directory: recomputes the state
/// root from the flat state and compares it with the newest header's.
pub fn verify_state(data_dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rtchain"))
        .arg("verify-state")
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run rtchain verify-state")
}

/// An anvil (node_modules/.bin/anvil) on a free loopback port, killed on drop.
pub struct Anvil {
    child: Child,
    pub port: u16,
}

impl Anvil {
    /// Starts anvil with `args` (after `--host 127.0.0.1 --port P`) and waits until it accepts
    /// connections.
    pub fn start(args: &[&str]) -> Self {
        let port = free_port();
        let child = Command::new(node_bin("anvil"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "spawn {} (run scripts/setup.sh): {e}",
                    node_bin("anvil").display()
                )
            });
        let mut anvil = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = anvil.child.try_wait() {
                panic!("anvil exited during start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "anvil did not listen on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        anvil
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
