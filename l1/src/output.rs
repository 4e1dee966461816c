//! Output roots and withdrawals: what the validators sign and post to the `OutputOracle`, and
//! what a withdrawal proves against it.
//!
//! An output root commits to an L2 block (OP's formula): `keccak256(version ‖ stateRoot ‖
//! messagePasserStorageRoot ‖ blockHash)`, version 0. Validators sign
//! `OutputOracle.outputDigest(block, root)` with their secp256k1 settlement keys (raw 65-byte
//! `r ‖ s ‖ v` signatures, low `s`); the oracle accepts a root with signatures of a quorum of
//! the validators registered for that block's epoch.

use alloy::{
    primitives::{Address, B256, Bytes, U256, keccak256},
    signers::{SignerSync, local::PrivateKeySigner},
    sol_types::SolValue,
};

/// The four fields an output root commits to (the Portal's `OutputRootProof`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputRootProof {
    pub version: B256,
    pub state_root: B256,
    pub message_passer_storage_root: B256,
    pub latest_blockhash: B256,
}

impl OutputRootProof {
    pub fn new(state_root: B256, message_passer_storage_root: B256, block_hash: B256) -> Self {
        Self {
            version: B256::ZERO,
            state_root,
            message_passer_storage_root,
            latest_blockhash: block_hash,
        }
    }

    pub fn root(&self) -> B256 {
        let mut buf = [0u8; 128];
        buf[..32].copy_from_slice(self.version.as_slice());
        buf[32..64].copy_from_slice(self.state_root.as_slice());
        buf[64..96].copy_from_slice(self.message_passer_storage_root.as_slice());
        buf[96..].copy_from_slice(self.latest_blockhash.as_slice());
        keccak256(buf)
    }
}

/// Where signatures over outputs are valid: one oracle on one L1, for one L2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputDomain {
    pub l1_chain_id: u64,
    pub oracle: Address,
    pub l2_chain_id: u64,
}

impl OutputDomain {
    /// `OutputOracle.outputDigest(l2_block, root)`.
    pub fn digest(&self, l2_block: u64, root: B256) -> B256 {
        let tag = keccak256("rtchain.OutputOracle.v1");
        keccak256(
            (
                tag,
                U256::from(self.l1_chain_id),
                self.oracle,
                U256::from(self.l2_chain_id),
                U256::from(l2_block),
                root,
            )
                .abi_encode(),
        )
    }
}

/// A validator's signature over an output: 65 bytes `r ‖ s ‖ v`, v in {27, 28}.
pub fn sign_output(key: &PrivateKeySigner, digest: B256) -> Bytes {
    let signature = key
        .sign_hash_sync(&digest)
        .expect("a local key signs any 32-byte hash");
    // alloy normalises s to the lower half; `as_bytes` is r ‖ s ‖ (27 + parity).
    Bytes::copy_from_slice(&signature.as_bytes())
}

/// The signer of a 65-byte output signature, if it is well formed.
pub fn recover_signer(digest: B256, signature: &[u8]) -> Option<Address> {
    let signature = alloy::primitives::Signature::try_from(signature).ok()?;
    // The oracle refuses high-s twins; so do we.
    if signature.normalize_s().is_some() {
        return None;
    }
    signature.recover_address_from_prehash(&digest).ok()
}

/// The signatures the oracle takes: one per signer, sorted by signer address.
pub fn order_signatures(mut signed: Vec<(Address, Bytes)>) -> Vec<Bytes> {
    signed.sort_by_key(|(a, _)| *a);
    signed.dedup_by_key(|(a, _)| *a);
    signed.into_iter().map(|(_, s)| s).collect()
}

/// The quorum of `n` validators (2f+1 when n = 3f+1), as the registry computes it.
pub fn quorum(n: usize) -> usize {
    n - (n.saturating_sub(1)) / 3
}

/// A withdrawal as the message passer hashes it and the Portal takes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Withdrawal {
    pub nonce: U256,
    pub sender: Address,
    pub target: Address,
    pub value: U256,
    pub gas_limit: U256,
    pub data: Bytes,
}

impl Withdrawal {
    pub fn hash(&self) -> B256 {
        keccak256(
            (
                self.nonce,
                self.sender,
                self.target,
                self.value,
                self.gas_limit,
                self.data.clone(),
            )
                .abi_encode_params(),
        )
    }

    /// The message passer's storage slot that records it (`sentMessages` is slot 0).
    pub fn storage_slot(&self) -> B256 {
        withdrawal_slot(self.hash())
    }
}

/// `keccak256(abi.encode(withdrawalHash, uint256(0)))`.
pub fn withdrawal_slot(withdrawal_hash: B256) -> B256 {
    keccak256((withdrawal_hash, U256::ZERO).abi_encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_recover_to_their_key_and_high_s_is_refused() {
        let key = PrivateKeySigner::random();
        let digest = keccak256("output");
        let sig = sign_output(&key, digest);
        assert_eq!(sig.len(), 65);
        assert!(sig[64] == 27 || sig[64] == 28);
        assert_eq!(recover_signer(digest, &sig), Some(key.address()));
        // The malleated twin: s' = n - s, v flipped.
        let n = U256::from_str_radix(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
            16,
        )
        .unwrap();
        let s = U256::from_be_slice(&sig[32..64]);
        let mut twin = sig.to_vec();
        twin[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
        twin[64] = if sig[64] == 27 { 28 } else { 27 };
        assert_eq!(recover_signer(digest, &twin), None);
        assert_eq!(recover_signer(digest, &sig[..64]), None);
    }

    #[test]
    fn quorums_follow_the_registry() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(7), 5);
    }
}
