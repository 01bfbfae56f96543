"""A small synchronous helper for driving anvil while building the devnet and test scenarios.

This is test tooling, not the keeper's RPC client: it sends unsigned transactions from
impersonated accounts (anvil's auto-impersonation), which only a dev node accepts.
"""

from __future__ import annotations

from typing import Any, cast

from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError
from web3.types import RPCEndpoint, TxParams, TxReceipt, Wei

from devnet import artifacts

# anvil's first default dev account (public, well-known test key): deploys and owns everything.
DEPLOYER = Web3.to_checksum_address("0xf39Fd6e51aad88F6F4ce6aB8827279cfFFb92266")


class TransactionFailedError(RuntimeError):
    """A devnet transaction reverted; the message carries the revert reason."""


class DevChain:
    def __init__(self, url: str) -> None:
        self.w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 120}))

    # --- node control -------------------------------------------------------------------------
    def rpc(self, method: str, *params: Any) -> Any:
        response = self.w3.provider.make_request(RPCEndpoint(method), list(params))
        if "error" in response:
            raise RuntimeError(f"{method} failed: {response['error']}")
        return response.get("result")

    def make_deterministic(self) -> None:
        """Every block advances the clock by exactly 1 s and any address may send (auto-impersonate)."""
        self.rpc("anvil_setBlockTimestampInterval", 1)
        self.rpc("anvil_autoImpersonateAccount", True)

    def resume_clock(self) -> None:
        """After `anvil --load-state`, continue from the saved head's time, not the wall clock.

        A loaded anvil would stamp its next block with the current time, far from the saved
        chain's (funding and TWAPs would jump); set the node's clock back to the head's instead
        (`evm_setNextBlockTimestamp` refuses a time before the wall clock there).
        """
        self.rpc("anvil_setTime", self.timestamp())
        self.make_deterministic()

    def timestamp(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def advance_time(self, seconds: int) -> None:
        """Mine one block `seconds` after the latest one."""
        self.rpc("evm_setNextBlockTimestamp", self.timestamp() + seconds)
        self.rpc("evm_mine")

    def set_balance(self, account: str, wei: int) -> None:
        self.rpc("anvil_setBalance", account, hex(wei))

    def snapshot(self) -> str:
        return cast(str, self.rpc("evm_snapshot"))

    def revert(self, snapshot_id: str) -> None:
        if not self.rpc("evm_revert", snapshot_id):
            raise RuntimeError(f"evm_revert({snapshot_id}) failed: snapshots are used up by one revert")

    # --- contracts ----------------------------------------------------------------------------
    def contract(self, name: str, address: str) -> Contract:
        return self.w3.eth.contract(address=Web3.to_checksum_address(address), abi=artifacts.load(name).abi)

    def deploy(self, name: str, *args: Any, sender: str = DEPLOYER) -> Contract:
        return self.deploy_artifact(artifacts.load(name), *args, sender=sender)

    def deploy_artifact(self, art: artifacts.Artifact, *args: Any, sender: str = DEPLOYER) -> Contract:
        if artifacts.needs_linking(art):
            raise ValueError(f"{art.name} needs its libraries linked first (artifacts.link)")
        factory = self.w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        tx_hash = factory.constructor(*args).transact({"from": Web3.to_checksum_address(sender)})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        if receipt["status"] != 1 or receipt["contractAddress"] is None:
            raise TransactionFailedError(f"deploying {art.name} failed")
        return self.w3.eth.contract(address=receipt["contractAddress"], abi=art.abi)

    def send(self, call: ContractFunction, sender: str = DEPLOYER, value: int = 0) -> TxReceipt:
        params: TxParams = {"from": Web3.to_checksum_address(sender)}
        if value:
            params["value"] = Wei(value)
        try:
            tx_hash = call.transact(params)
        except ContractLogicError as exc:
            raise TransactionFailedError(f"{call.fn_name} from {sender} reverted: {exc.message}") from exc
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        if receipt["status"] != 1:
            block = receipt["blockNumber"]
            raise TransactionFailedError(f"{call.fn_name} from {sender} failed in block {block}")
        return receipt
