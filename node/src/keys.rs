//! `rtchain keys`: validator keys for BFT replication (ed25519, docs/consensus.md) and
//! secp256k1 keys for settlement (signing output roots, posting batches: docs/l1.md).
//!
//! A key file holds the 32-byte secret as one line of hex, readable by its owner only (mode
//! 0600, created exclusively: an existing file is never overwritten). The public key (or, for
//! secp256k1, the address) is what the other validators and the L1 contracts list.

use std::{
    io::{Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use alloy_signer_local::{MnemonicBuilder, PrivateKeySigner, coins_bip39::English};
use ed25519_dalek::SigningKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: already exists; a validator key is never overwritten (move it away first)")]
    Exists { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a key file (expected 64 hex digits on one line)")]
    Malformed { path: String },
    #[error("{path}: readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: String, mode: u32 },
    #[error("cannot read randomness from the OS: {0}")]
    Random(std::io::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Creates a new ed25519 key at `path` from OS randomness.
pub fn generate(path: &Path) -> Result<SigningKey, KeyError> {
    let seed = random_secret()?;
    write_secret(path, &seed)?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads the ed25519 key at `path`, refusing a file others can read.
pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&read_secret(path)?))
}

/// Creates a new secp256k1 settlement key at `path`.
pub fn generate_secp256k1(path: &Path) -> Result<PrivateKeySigner, KeyError> {
    // Retries the (astronomically rare) seed outside the curve order.
    loop {
        let seed = random_secret()?;
        if let Ok(key) = PrivateKeySigner::from_slice(&seed) {
            write_secret(path, &seed)?;
            return Ok(key);
        }
    }
}

/// Reads the secp256k1 key at `path`, refusing a file others can read.
pub fn load_secp256k1(path: &Path) -> Result<PrivateKeySigner, KeyError> {
    let seed = read_secret(path)?;
    PrivateKeySigner::from_slice(&seed).map_err(|_| KeyError::Malformed {
        path: path.display().to_string(),
    })
}

fn random_secret() -> Result<[u8; 32], KeyError> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(KeyError::Random)?;
    Ok(seed)
}

/// Writes a secret to a new file (mode 0600), synced; never overwrites one.
pub fn write_secret(path: &Path, seed: &[u8; 32]) -> Result<(), KeyError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: path.display().to_string(),
            },
            _ => KeyError::Io {
                path: path.display().to_string(),
                source: e,
            },
        })?;
    file.write_all(format!("{}\n", hex::encode(seed)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(path))
}

fn read_secret(path: &Path) -> Result<[u8; 32], KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.display().to_string(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let malformed = || KeyError::Malformed {
        path: path.display().to_string(),
    };
    let bytes = hex::decode(text.trim().trim_start_matches("0x")).map_err(|_| malformed())?;
    bytes.try_into().map_err(|_| malformed())
}

/// The public key as validators list it: 0x-prefixed hex.
pub fn public_hex(key: &SigningKey) -> String {
    format!("0x{}", hex::encode(key.verifying_key().as_bytes()))
}

/// Anvil's (and hardhat's) dev key `i` of the test mnemonic: funded on the devnet's L1 as on
/// its L2.
pub fn dev_key(i: u32) -> PrivateKeySigner {
    MnemonicBuilder::<English>::default()
        .phrase(rtchain_state::genesis::DEV_MNEMONIC)
        .index(i)
        .and_then(|b| b.build())
        .expect("the dev mnemonic derives")
}

/// The dev key the deployer, the registry's and inbox's owner and the guardian use.
pub const DEV_ADMIN_KEY: u32 = 0;
/// The dev key of the batcher.
pub const DEV_BATCHER_KEY: u32 = 1;
/// Validator `i` signs output roots with dev key `DEV_SETTLEMENT_KEY_FIRST + i`.
pub const DEV_SETTLEMENT_KEY_FIRST: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_generated_key_reads_back_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("validator.key");
        let key = generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(public_hex(&load(&path).unwrap()), public_hex(&key));
        let again = generate(&path).unwrap_err().to_string();
        assert!(again.contains("never overwritten"), "{again}");
        assert_eq!(public_hex(&load(&path).unwrap()), public_hex(&key));
        // Two keys differ (randomness, not a constant).
        let other = generate(&dir.path().join("other.key")).unwrap();
        assert_ne!(public_hex(&other), public_hex(&key));
    }

    #[test]
    fn bad_key_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        std::fs::write(&path, "not hex\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(
            load(&path)
                .unwrap_err()
                .to_string()
                .contains("64 hex digits")
        );
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("chmod 600"));
        assert!(load(&dir.path().join("missing.key")).is_err());
    }
}
