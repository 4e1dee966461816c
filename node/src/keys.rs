//! `rtchain keys`: validator keys for BFT replication (ed25519, docs/consensus.md).
//!
//! A key file holds the 32-byte secret seed as one line of hex, readable by its owner only
//! (mode 0600, created exclusively: an existing file is never overwritten). The public key is
//! what the other validators list in their configs.

use std::{
    io::{Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

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
    #[error("{path}: not a validator key file (expected 64 hex digits on one line)")]
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

/// Creates a new key at `path` from OS randomness; returns its public key.
pub fn generate(path: &Path) -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(KeyError::Random)?;
    let key = SigningKey::from_bytes(&seed);
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
        .map_err(io(path))?;
    Ok(key)
}

/// Reads the key at `path`, refusing a file others can read.
pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
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
    let bytes = hex::decode(text.trim()).map_err(|_| malformed())?;
    let seed: [u8; 32] = bytes.try_into().map_err(|_| malformed())?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The public key as validators list it: 0x-prefixed hex.
pub fn public_hex(key: &SigningKey) -> String {
    format!("0x{}", hex::encode(key.verifying_key().as_bytes()))
}

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
