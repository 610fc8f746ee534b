//! The control plane: signed transform modules pushed from the sink to agents.
//!
//! An operator signs a module with an ed25519 key (`transform keygen`, `transform sign`)
//! and pushes it to the sink over QUIC with an admin certificate (`transform push`). The
//! sink stores it and offers it on the control stream of every connected agent that runs
//! the pipeline, and to agents that connect later. The agent trusts keys, not the sink:
//! it verifies the signature (over the module's hash, the pipeline and the version) with
//! a key from its config, compiles the module, runs a self-check, persists it in its redb
//! queue file and hands it to the stage's [`SwapSlot`](crate::transform::SwapSlot), the
//! same batch-boundary swap as a local file change. A new version is watched: too many
//! failing batches right after the swap roll it back (see
//! [`RollbackGuard`](crate::transform::RollbackGuard)).
//!
//! - [`agent`]: the agent's control stream, restore at start, offers, rollbacks.
//! - [`sink`]: the sink's module store, agent registry and admin requests.
//! - [`admin`]: the operator's client (`transform push|rollback|status`).

pub mod admin;
pub mod agent;
pub mod sink;

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// Control-plane errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// A key or signature file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A key, signature or public key is malformed.
    #[error("{0}")]
    Format(String),
    /// Talking to the sink failed.
    #[error("{0}")]
    Connection(String),
}

/// Prefix of a public key written as text.
const KEY_PREFIX: &str = "ed25519:";

/// What a module signature covers: the module's SHA-256, the pipeline and the version,
/// so a signed module cannot be replayed into another pipeline or under another version.
pub fn signed_message(sha256_hex: &str, pipeline: &str, version: &str) -> Vec<u8> {
    format!("dataweaver-module-v1\n{sha256_hex}\n{pipeline}\n{version}").into_bytes()
}

/// A new ed25519 key pair: the PKCS#8 private key and the public key as `ed25519:<b64>`.
pub fn keygen() -> Result<(Vec<u8>, String), ControlError> {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| ControlError::Format("key generation failed".into()))?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
        .map_err(|_| ControlError::Format("generated key unusable".into()))?;
    let public = format!("{KEY_PREFIX}{}", B64.encode(pair.public_key().as_ref()));
    Ok((doc.as_ref().to_vec(), public))
}

/// Writes `name.key` (PKCS#8 PEM, mode 0600) and `name.pub` (`ed25519:<b64>`) into `dir`.
pub fn write_key_pair(dir: &Path, name: &str) -> Result<(String, String), ControlError> {
    let (pkcs8, public) = keygen()?;
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| ControlError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let key_path = dir.join(format!("{name}.key"));
    let pub_path = dir.join(format!("{name}.pub"));
    let body = B64.encode(&pkcs8);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    write_private(&key_path, pem.as_bytes()).map_err(io(&key_path))?;
    std::fs::write(&pub_path, format!("{public}\n")).map_err(io(&pub_path))?;
    Ok((key_path.display().to_string(), public))
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// A signing key read from a `transform keygen` key file.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// Reads a PKCS#8 PEM private key.
    pub fn read(path: &Path) -> Result<SigningKey, ControlError> {
        let text = std::fs::read_to_string(path).map_err(|source| ControlError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let der = B64
            .decode(body.trim())
            .map_err(|e| ControlError::Format(format!("{}: not a PEM key: {e}", path.display())))?;
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|e| {
            ControlError::Format(format!("{}: not an ed25519 key: {e}", path.display()))
        })?;
        Ok(SigningKey { pair })
    }

    /// The public key, `ed25519:<b64>`.
    pub fn public(&self) -> String {
        format!(
            "{KEY_PREFIX}{}",
            B64.encode(self.pair.public_key().as_ref())
        )
    }

    /// Signs `module` for `pipeline` and `version`.
    pub fn sign_module(&self, module: &[u8], pipeline: &str, version: &str) -> Vec<u8> {
        let hash = crate::transform::wasm::sha256_hex(module);
        self.pair
            .sign(&signed_message(&hash, pipeline, version))
            .as_ref()
            .to_vec()
    }
}

/// Decodes a public key written as `ed25519:<b64>`.
pub fn parse_public_key(text: &str) -> Result<Vec<u8>, String> {
    let b64 = text
        .trim()
        .strip_prefix(KEY_PREFIX)
        .ok_or_else(|| format!("`{text}` does not start with `{KEY_PREFIX}`"))?;
    let raw = B64
        .decode(b64)
        .map_err(|e| format!("`{text}` is not base64: {e}"))?;
    if raw.len() != 32 {
        return Err(format!(
            "`{text}` is {} bytes, an ed25519 key is 32",
            raw.len()
        ));
    }
    Ok(raw)
}

/// Whether `signature` by `public_key` (`ed25519:<b64>`) covers `module`, `pipeline` and
/// `version`.
pub fn verify(
    public_key: &str,
    module: &[u8],
    pipeline: &str,
    version: &str,
    signature: &[u8],
) -> bool {
    let Ok(raw) = parse_public_key(public_key) else {
        return false;
    };
    let hash = crate::transform::wasm::sha256_hex(module);
    UnparsedPublicKey::new(&ED25519, raw)
        .verify(&signed_message(&hash, pipeline, version), signature)
        .is_ok()
}

/// A detached signature file (`transform sign`), JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// Pipeline signed for.
    pub pipeline: String,
    /// Version signed for.
    pub version: String,
    /// SHA-256 of the module, hex (informational; the signature covers it).
    pub sha256: String,
    /// The public key, `ed25519:<b64>`.
    pub key: String,
    /// The signature, base64.
    pub signature: String,
}

impl SignatureFile {
    /// Signs `module` with `key`.
    pub fn create(key: &SigningKey, module: &[u8], pipeline: &str, version: &str) -> Self {
        SignatureFile {
            pipeline: pipeline.into(),
            version: version.into(),
            sha256: crate::transform::wasm::sha256_hex(module),
            key: key.public(),
            signature: B64.encode(key.sign_module(module, pipeline, version)),
        }
    }

    /// The raw signature bytes.
    pub fn signature_bytes(&self) -> Result<Vec<u8>, ControlError> {
        B64.decode(&self.signature)
            .map_err(|e| ControlError::Format(format!("signature is not base64: {e}")))
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    crate::record::now_ns() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_module_pipeline_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let (key_path, public) = write_key_pair(dir.path(), "ops").unwrap();
        let key = SigningKey::read(Path::new(&key_path)).unwrap();
        assert_eq!(key.public(), public);
        let module = b"\0asm fake module";
        let sig = key.sign_module(module, "app", "v2");
        assert!(verify(&public, module, "app", "v2", &sig));
        assert!(!verify(&public, b"\0asm tampered", "app", "v2", &sig));
        assert!(!verify(&public, module, "other", "v2", &sig));
        assert!(!verify(&public, module, "app", "v3", &sig));
        let (_, stranger) = keygen().unwrap();
        assert!(!verify(&stranger, module, "app", "v2", &sig));
        assert!(parse_public_key("ed25519:AAAA").is_err());
    }
}
