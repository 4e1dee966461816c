//! The validator set, vote signing, and signature verification (single and batched).

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};

use crate::codec::Writer;
use crate::types::{Certificate, Signature, SignedVote, VALIDATORS_MAX, ValidatorIndex, Vote};

/// Domain separation: a vote signature can never be mistaken for any other ed25519 signature
/// the same key makes (for example, on the wire protocol), nor for one on another chain
/// (the namespace, e.g. the chain id).
const SIGNING_DOMAIN: &[u8] = b"rtchain/consensus/vote/v1";
/// Namespaces are short identifiers (a chain id, a network name).
pub const NAMESPACE_BYTES_MAX: usize = 64;

/// Why a validator set could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidatorSetError {
    #[error("validator set is empty")]
    Empty,
    #[error("{0} validators exceed the maximum {VALIDATORS_MAX}")]
    TooMany(usize),
    #[error("validator {0} has a weak (small-order) public key; generate a new key")]
    WeakKey(usize),
    #[error("validators {0} and {1} have the same public key; each validator needs its own key")]
    Duplicate(usize, usize),
    #[error("namespace of {0} bytes exceeds {NAMESPACE_BYTES_MAX}")]
    Namespace(usize),
}

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("{got} signatures, a quorum is {quorum}")]
    NoQuorum { got: usize, quorum: usize },
    #[error("signer {0} out of range or signers not strictly increasing")]
    BadSigners(ValidatorIndex),
    #[error("a signature does not verify")]
    BadSignature,
}

/// The n validators' public keys and the namespace their votes are signed under.
#[derive(Clone, Debug)]
pub struct Validators {
    keys: Vec<VerifyingKey>,
    namespace: Vec<u8>,
}

impl Validators {
    pub fn new(keys: Vec<VerifyingKey>, namespace: &[u8]) -> Result<Self, ValidatorSetError> {
        if keys.is_empty() {
            return Err(ValidatorSetError::Empty);
        }
        if keys.len() > VALIDATORS_MAX {
            return Err(ValidatorSetError::TooMany(keys.len()));
        }
        if namespace.len() > NAMESPACE_BYTES_MAX {
            return Err(ValidatorSetError::Namespace(namespace.len()));
        }
        for (i, k) in keys.iter().enumerate() {
            // A small-order key makes signatures that verify for many messages; refuse it so
            // single and batch verification can never disagree about a validator's vote.
            if k.is_weak() {
                return Err(ValidatorSetError::WeakKey(i));
            }
            if let Some(j) = keys[..i].iter().position(|o| o == k) {
                return Err(ValidatorSetError::Duplicate(j, i));
            }
        }
        Ok(Self {
            keys,
            namespace: namespace.to_vec(),
        })
    }

    /// Number of validators.
    pub fn n(&self) -> usize {
        self.keys.len()
    }
    /// Faults tolerated: the largest f with n >= 3f+1.
    pub fn f(&self) -> usize {
        (self.n() - 1) / 3
    }
    /// Quorum size: the smallest q with 2q - n >= f + 1, so any two quorums share at least one
    /// honest validator. For n = 3f+1 this is 2f+1.
    pub fn quorum(&self) -> usize {
        (self.n() + self.f()) / 2 + 1
    }
    pub fn key(&self, i: ValidatorIndex) -> Option<&VerifyingKey> {
        self.keys.get(i as usize)
    }
    pub fn index_of(&self, key: &VerifyingKey) -> Option<ValidatorIndex> {
        self.keys
            .iter()
            .position(|k| k == key)
            .map(|i| i as ValidatorIndex)
    }
    pub fn namespace(&self) -> &[u8] {
        &self.namespace
    }

    /// The bytes a vote signature covers: domain, namespace, vote.
    pub fn signing_bytes(&self, vote: &Vote) -> Vec<u8> {
        let mut w = Writer::with_capacity(SIGNING_DOMAIN.len() + 1 + self.namespace.len() + 64);
        w.buf.extend_from_slice(SIGNING_DOMAIN);
        w.u8(self.namespace.len() as u8);
        w.buf.extend_from_slice(&self.namespace);
        vote.encode_into(&mut w);
        w.buf
    }

    /// Signs a vote. (ed25519 is deterministic: signing the same vote again gives the same
    /// signature, which is how a restarted node re-sends the votes it replayed from its log.)
    pub fn sign(&self, key: &SigningKey, vote: &Vote) -> Signature {
        Signature(key.sign(&self.signing_bytes(vote)).to_bytes())
    }

    /// Verifies one vote's signature.
    pub fn verify(&self, vote: &SignedVote) -> bool {
        let Some(key) = self.key(vote.signer) else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&vote.signature.0);
        key.verify(&self.signing_bytes(&vote.vote), &sig).is_ok()
    }

    /// Verifies a certificate: signers strictly increasing and in range, at least a quorum of
    /// them, and all signatures valid, checked in one ed25519 batch (about half the cost of
    /// verifying them one by one).
    pub fn verify_certificate(&self, cert: &Certificate) -> Result<(), CertificateError> {
        let quorum = self.quorum();
        if cert.signatures.len() < quorum || cert.signatures.len() > self.n() {
            return Err(CertificateError::NoQuorum {
                got: cert.signatures.len(),
                quorum,
            });
        }
        let mut last: Option<ValidatorIndex> = None;
        let mut keys = Vec::with_capacity(cert.signatures.len());
        let mut sigs = Vec::with_capacity(cert.signatures.len());
        for (i, s) in &cert.signatures {
            if last.is_some_and(|l| *i <= l) {
                return Err(CertificateError::BadSigners(*i));
            }
            last = Some(*i);
            let key = self.key(*i).ok_or(CertificateError::BadSigners(*i))?;
            keys.push(*key);
            sigs.push(ed25519_dalek::Signature::from_bytes(&s.0));
        }
        let msg = self.signing_bytes(&cert.vote);
        let msgs: Vec<&[u8]> = vec![&msg; sigs.len()];
        ed25519_dalek::verify_batch(&msgs, &sigs, &keys).map_err(|_| CertificateError::BadSignature)
    }
}

/// A deterministic key from a 32-byte seed (tests, the simulator, and `rtchain keys generate`
/// which draws the seed from the OS).
pub fn signing_key_from_seed(seed: [u8; 32]) -> SigningKey {
    SigningKey::from_bytes(&seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Proposal, Signature};
    use alloy_primitives::B256;

    fn set(n: usize) -> (Vec<SigningKey>, Validators) {
        let sks: Vec<_> = (0..n)
            .map(|i| signing_key_from_seed([i as u8 + 1; 32]))
            .collect();
        let v = Validators::new(sks.iter().map(|k| k.verifying_key()).collect(), b"test").unwrap();
        (sks, v)
    }

    #[test]
    fn quorums() {
        for (n, f, q) in [
            (1, 0, 1),
            (4, 1, 3),
            (5, 1, 4),
            (6, 1, 4),
            (7, 2, 5),
            (10, 3, 7),
        ] {
            let (_, v) = set(n);
            assert_eq!((v.f(), v.quorum()), (f, q), "n={n}");
            assert!(2 * v.quorum() - n > v.f());
        }
    }

    #[test]
    fn certificate_batch_verification() {
        let (sks, v) = set(4);
        let vote = Vote::Notarize(Proposal {
            view: 3,
            parent_view: 2,
            height: 2,
            digest: B256::repeat_byte(5),
        });
        let mut cert = Certificate {
            vote,
            signatures: (0..3).map(|i| (i as u16, v.sign(&sks[i], &vote))).collect(),
        };
        assert_eq!(v.verify_certificate(&cert), Ok(()));
        assert!(v.verify(&SignedVote {
            vote,
            signer: 1,
            signature: cert.signatures[1].1
        }));
        let good = cert.clone();
        cert.signatures[1].1 = Signature([7; 64]);
        assert_eq!(
            v.verify_certificate(&cert),
            Err(CertificateError::BadSignature)
        );
        let mut dup = good.clone();
        dup.signatures[1].0 = 0;
        assert!(matches!(
            v.verify_certificate(&dup),
            Err(CertificateError::BadSigners(0))
        ));
        let mut few = good.clone();
        few.signatures.pop();
        assert!(matches!(
            v.verify_certificate(&few),
            Err(CertificateError::NoQuorum { .. })
        ));
        let mut other = good;
        other.vote = Vote::Nullify(3);
        assert_eq!(
            v.verify_certificate(&other),
            Err(CertificateError::BadSignature)
        );
    }
}
