# End-to-end client check with web3.py: chain_id, deploy Token (contracts/out/Token.json), ETH transfer,
# token transfer, Transfer events (contract events + eth_getLogs), balanceOf, and a revert that raises
# ContractLogicError carrying the reason ("insufficient balance") through eth_call and eth_estimateGas.
# Run: .venv/bin/python tests/python/client.py   (RPC_URL defaults to http://127.0.0.1:8545; dev account 0 signs;
#      setup: python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt). Exits 1 on failure.
import json
import os
import sys
import time
from pathlib import Path

from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.middleware import SignAndSendRawMiddlewareBuilder

RPC_URL = os.environ.get("RPC_URL", "http://127.0.0.1:8545")
KEY0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
RECIPIENT = Web3.to_checksum_address("0x70997970C51812dc3A010C7d01b50e0d17dc79C8")  # dev account 1
ARTIFACT = json.loads((Path(__file__).resolve().parents[2] / "contracts/out/Token.json").read_text())
SUPPLY = Web3.to_wei(1_000_000, "ether")
AMOUNT = Web3.to_wei("123.5", "ether")

w3 = Web3(Web3.HTTPProvider(RPC_URL, request_kwargs={"timeout": 30}))
account = w3.eth.account.from_key(KEY0)
w3.middleware_onion.inject(SignAndSendRawMiddlewareBuilder.build(account), layer=0)
w3.eth.default_account = account.address
state = {}


def check(cond, msg):
    if not cond:
        raise AssertionError(f"check failed: {msg}")


def step(name):
    def run(fn):
        t0 = time.monotonic()
        try:
            detail = fn()
        except Exception as e:  # noqa: BLE001 - report any failure as a failed step
            print(f"FAIL {name}: {type(e).__name__}: {e}", file=sys.stderr)
            sys.exit(1)
        print(f"ok   {name}{': ' + detail if detail else ''} ({round((time.monotonic() - t0) * 1000)} ms)", flush=True)

    return run


def mined(tx_hash):
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
    check(receipt["status"] == 1, f"tx {tx_hash.hex()} status {receipt['status']}")
    return receipt


@step("chain_id")
def _():
    return f"{w3.eth.chain_id} at {RPC_URL}"


@step("deploy Token")
def _():
    factory = w3.eth.contract(abi=ARTIFACT["abi"], bytecode=ARTIFACT["bytecode"])
    receipt = mined(factory.constructor("Test Token", "TT", SUPPLY).transact())
    check(receipt["contractAddress"], "receipt has no contractAddress")
    check(len(w3.eth.get_code(receipt["contractAddress"])) > 0, "no code at the deployed address")
    state["token"] = w3.eth.contract(address=receipt["contractAddress"], abi=ARTIFACT["abi"])
    state["block"] = receipt["blockNumber"]
    return f"{receipt['contractAddress']} in block {receipt['blockNumber']}, gas {receipt['gasUsed']}"


@step("ETH transfer")
def _():
    before = w3.eth.get_balance(RECIPIENT)
    value = Web3.to_wei("1.25", "ether")
    receipt = mined(w3.eth.send_transaction({"to": RECIPIENT, "value": value}))
    grew = w3.eth.get_balance(RECIPIENT) - before
    check(grew == value, f"recipient balance grew by {grew}, expected {value}")
    return f"1.25 ETH to {RECIPIENT}, block {receipt['blockNumber']}"


@step("token transfer")
def _():
    receipt = mined(state["token"].functions.transfer(RECIPIENT, AMOUNT).transact())
    events = state["token"].events.Transfer().process_receipt(receipt)
    check(len(events) == 1 and events[0]["args"]["value"] == AMOUNT, f"receipt Transfer events: {events}")
    return f"block {receipt['blockNumber']}, gas {receipt['gasUsed']}"


@step("Transfer events")
def _():
    token = state["token"]
    events = token.events.Transfer().get_logs(from_block=state["block"])
    check(len(events) == 2, f"expected 2 Transfer events (mint + transfer), got {len(events)}")
    mint, sent = events
    check(mint["args"]["from"] == "0x" + "00" * 20 and mint["args"]["value"] == SUPPLY, f"mint args {mint['args']}")
    check(sent["args"]["to"] == RECIPIENT and sent["args"]["value"] == AMOUNT, f"transfer args {sent['args']}")
    logs = w3.eth.get_logs({"address": token.address, "fromBlock": state["block"], "toBlock": "latest"})
    check(len(logs) == 2, f"eth_getLogs returned {len(logs)} logs")
    return f"mint {mint['args']['value']}, transfer {sent['args']['value']} (block {sent['blockNumber']}, logIndex {sent['logIndex']})"


@step("balanceOf")
def _():
    bal1 = state["token"].functions.balanceOf(RECIPIENT).call()
    bal0 = state["token"].functions.balanceOf(account.address).call()
    check(bal1 == AMOUNT, f"recipient has {bal1}, expected {AMOUNT}")
    check(bal0 == SUPPLY - AMOUNT, f"sender has {bal0}, expected {SUPPLY - AMOUNT}")
    return f"recipient {bal1}, sender {bal0}"


def expect_revert(fn):
    try:
        fn()
    except ContractLogicError as e:
        check("insufficient balance" in str(e.message), f"error lacks the reason: {e!r}")
        return e.message
    raise AssertionError("call did not revert")


@step("revert reason via eth_call")
def _():
    return expect_revert(lambda: state["token"].functions.transfer(RECIPIENT, SUPPLY * 2).call())


@step("revert reason via eth_estimateGas")
def _():
    return expect_revert(lambda: state["token"].functions.transfer(RECIPIENT, SUPPLY * 2).transact())


print("all web3.py client checks passed")
