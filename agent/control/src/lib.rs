//! The control plane: signed transform modules pushed from the sink to agents.
//!
//! An operator signs a module with an ed25519 key (`transform keygen`, `transform sign`)
//! and pushes it to the sink over QUIC with an admin certificate (`transform push`). The
//! sink stores it and offers it on the control stream of every connected agent that runs
//! the pipeline, and to agents that connect later. The agent trusts keys, not the sink:
//! it verifies the signature (over the module's hash, the pipeline and the version) with
//! a key from its config, compiles the module, runs a self-check, persists it in its redb
//! queue file and hands it to the stage's [`SwapSlot`](dataweaver_transform::SwapSlot), the
//! same batch-boundary swap as a local file change. A new version is watched: too many
//! failing batches right after the swap roll it back (see
//! [`RollbackGuard`](dataweaver_transform::RollbackGuard)).
//!
//! - [`agent`]: the agent's control stream, restore at start, offers, rollbacks.
//! - [`sink`]: the sink's module store, agent registry and admin requests.
//! - [`admin`]: the operator's client (`transform push|rollback|status`).

#![warn(missing_docs, unreachable_pub)]

pub mod admin;
pub mod agent;
mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod sink;
mod store;

pub use config::ControlConfig;

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use dataweaver_wire::ModuleOffer;

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

/// What a module signature covers: the module's SHA-256, the pipeline, the version, the
/// sequence number and the self-check vectors' SHA-256, so a signed module cannot be
/// replayed into another pipeline, under another version, after a newer one, or with
/// other vectors.
pub fn signed_message(
    sha256_hex: &str,
    pipeline: &str,
    version: &str,
    seq: u64,
    vectors_sha256_hex: &str,
) -> Vec<u8> {
    format!(
        "dataweaver-module-v2\n{sha256_hex}\n{pipeline}\n{version}\n{seq}\n{vectors_sha256_hex}"
    )
    .into_bytes()
}

/// The first format, without sequence or vectors: recognised only to refuse it clearly.
fn signed_message_v1(sha256_hex: &str, pipeline: &str, version: &str) -> Vec<u8> {
    format!("dataweaver-module-v1\n{sha256_hex}\n{pipeline}\n{version}").into_bytes()
}

/// What a rollback order's signature covers: the pipeline, the module it returns to
/// ([`rollback_target`]) and the sequence number.
pub fn rollback_message(pipeline: &str, target: &str, seq: u64) -> Vec<u8> {
    format!("dataweaver-rollback-v2\n{pipeline}\n{target}\n{seq}").into_bytes()
}

/// What a rollback to `module` signs: its SHA-256, or `configured` for none (back to the
/// agent's configured module).
pub fn rollback_target(module: &[u8]) -> String {
    if module.is_empty() {
        "configured".into()
    } else {
        dataweaver_transform::wasm::sha256_hex(module)
    }
}

/// A sequence number for a new signature: milliseconds since the epoch, so orders signed
/// later (on any machine with a sane clock) are newer without a shared counter.
pub fn default_seq() -> u64 {
    now_ms()
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

/// Writes `name.key` (PKCS#8 PEM, mode 0600) and `name.pub` (`ed25519:<b64>`) into `dir`;
/// never over an existing key.
pub fn write_key_pair(dir: &Path, name: &str) -> Result<(String, String), ControlError> {
    let (pkcs8, public) = keygen()?;
    let io = |p: &Path| {
        let path = p.display().to_string();
        move |source| ControlError::Io { path, source }
    };
    dataweaver_store::fsmode::data_dir(dir).map_err(io(dir))?;
    let key_path = dir.join(format!("{name}.key"));
    let pub_path = dir.join(format!("{name}.pub"));
    if key_path.exists() {
        return Err(ControlError::Format(format!(
            "{} exists: remove it first to make a new key (agents that trust the old one refuse what a new one signs)",
            key_path.display()
        )));
    }
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

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    dataweaver_store::fsmode::create_file(path, dataweaver_store::fsmode::PRIVATE_FILE, true)?
        .write_all(bytes)
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

    /// Signs `module` for `pipeline`, `version`, `seq` and the self-check `vectors`.
    pub fn sign_module(
        &self,
        module: &[u8],
        pipeline: &str,
        version: &str,
        seq: u64,
        vectors: &[u8],
    ) -> Vec<u8> {
        let hash = dataweaver_transform::wasm::sha256_hex(module);
        let vectors = dataweaver_transform::wasm::sha256_hex(vectors);
        self.pair
            .sign(&signed_message(&hash, pipeline, version, seq, &vectors))
            .as_ref()
            .to_vec()
    }

    /// Signs a rollback order for `pipeline` to `target` ([`rollback_target`]).
    pub fn sign_rollback(&self, pipeline: &str, target: &str, seq: u64) -> Vec<u8> {
        self.pair
            .sign(&rollback_message(pipeline, target, seq))
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

fn verify_raw(public_key: &str, message: &[u8], signature: &[u8]) -> bool {
    let Ok(raw) = parse_public_key(public_key) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, raw)
        .verify(message, signature)
        .is_ok()
}

/// Checks an offer's signature by its `key`: a push over [`signed_message`], a rollback
/// order over [`rollback_message`]. The error says why, for the operator.
pub fn verify_offer(offer: &ModuleOffer) -> Result<(), String> {
    let key = &offer.key;
    if offer.rollback {
        let target = rollback_target(&offer.module);
        if verify_raw(
            key,
            &rollback_message(&offer.pipeline, &target, offer.seq),
            &offer.signature,
        ) {
            return Ok(());
        }
        return Err("bad signature on the rollback order: it does not cover this pipeline, target and sequence".into());
    }
    let hash = dataweaver_transform::wasm::sha256_hex(&offer.module);
    let vectors = dataweaver_transform::wasm::sha256_hex(&offer.vectors);
    let msg = signed_message(&hash, &offer.pipeline, &offer.version, offer.seq, &vectors);
    if verify_raw(key, &msg, &offer.signature) {
        return Ok(());
    }
    if verify_raw(
        key,
        &signed_message_v1(&hash, &offer.pipeline, &offer.version),
        &offer.signature,
    ) {
        return Err("signed in the old v1 format, which carries no sequence number and so could be replayed: sign it again with this version (`transform sign` or `transform push --key`)".into());
    }
    Err("bad signature: it does not cover this module, pipeline, version, sequence and self-check vectors (tampered, or signed for something else)".into())
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
    /// Sequence number (see [`signed_message`]).
    pub seq: u64,
    /// SHA-256 of the self-check vectors signed for, hex (of no bytes: none).
    pub vectors_sha256: String,
    /// The public key, `ed25519:<b64>`.
    pub key: String,
    /// The signature, base64.
    pub signature: String,
}

impl SignatureFile {
    /// Signs `module` with `key` for `pipeline`, `version`, `seq` and `vectors`.
    pub fn create(
        key: &SigningKey,
        module: &[u8],
        pipeline: &str,
        version: &str,
        seq: u64,
        vectors: &[u8],
    ) -> Self {
        SignatureFile {
            pipeline: pipeline.into(),
            version: version.into(),
            sha256: dataweaver_transform::wasm::sha256_hex(module),
            seq,
            vectors_sha256: dataweaver_transform::wasm::sha256_hex(vectors),
            key: key.public(),
            signature: B64.encode(key.sign_module(module, pipeline, version, seq, vectors)),
        }
    }

    /// Reads a signature file; one in the v1 format (no `seq`) is refused by name.
    pub fn parse(bytes: &[u8]) -> Result<SignatureFile, ControlError> {
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| ControlError::Format(format!("not a signature file: {e}")))?;
        if v.get("seq").is_none() && v.get("signature").is_some() {
            return Err(ControlError::Format(
                "a v1 signature (no `seq`): agents refuse it because it could be replayed; sign the module again with `transform sign`".into(),
            ));
        }
        serde_json::from_value(v)
            .map_err(|e| ControlError::Format(format!("not a signature file: {e}")))
    }

    /// The raw signature bytes.
    pub fn signature_bytes(&self) -> Result<Vec<u8>, ControlError> {
        B64.decode(&self.signature)
            .map_err(|e| ControlError::Format(format!("signature is not base64: {e}")))
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    dataweaver_core::now_ns() / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(
        key: &SigningKey,
        module: &[u8],
        pipeline: &str,
        version: &str,
        seq: u64,
    ) -> ModuleOffer {
        ModuleOffer {
            pipeline: pipeline.into(),
            version: version.into(),
            module: module.to_vec(),
            signature: key.sign_module(module, pipeline, version, seq, b""),
            key: key.public(),
            seq,
            ..Default::default()
        }
    }

    #[test]
    fn signatures_cover_module_pipeline_version_seq_and_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let (key_path, public) = write_key_pair(dir.path(), "ops").unwrap();
        let key = SigningKey::read(Path::new(&key_path)).unwrap();
        assert_eq!(key.public(), public);
        let module = b"\0asm fake module";
        let good = offer(&key, module, "app", "v2", 7);
        assert_eq!(verify_offer(&good), Ok(()));
        let tampered = |f: &dyn Fn(&mut ModuleOffer)| {
            let mut o = good.clone();
            f(&mut o);
            verify_offer(&o).unwrap_err()
        };
        assert!(tampered(&|o| o.module = b"\0asm tampered".to_vec()).contains("bad signature"));
        tampered(&|o| o.pipeline = "other".into());
        tampered(&|o| o.version = "v3".into());
        tampered(&|o| o.seq = 8);
        tampered(&|o| o.vectors = b"{}".to_vec());
        tampered(&|o| o.rollback = true);
        let (_, stranger) = keygen().unwrap();
        tampered(&|o| o.key = stranger.clone());
        assert!(parse_public_key("ed25519:AAAA").is_err());
    }

    /// Issue 12, defect 13: a module signed in the v1 format (no sequence number) could
    /// be replayed after a newer one; it is refused, and the reason says to re-sign.
    #[test]
    fn v1_signatures_are_refused_with_a_reason() {
        let (pkcs8, _) = keygen().unwrap();
        let key = SigningKey {
            pair: Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap(),
        };
        let module = b"\0asm fake module";
        let hash = dataweaver_transform::wasm::sha256_hex(module);
        let mut o = offer(&key, module, "app", "v1", 0);
        o.signature = key
            .pair
            .sign(&signed_message_v1(&hash, "app", "v1"))
            .as_ref()
            .to_vec();
        assert!(verify_offer(&o).unwrap_err().contains("v1 format"));
        let mut order = ModuleOffer {
            pipeline: "app".into(),
            key: key.public(),
            seq: 9,
            rollback: true,
            ..Default::default()
        };
        order.signature = key.sign_rollback("app", "configured", 9);
        assert_eq!(verify_offer(&order), Ok(()));
        order.module = module.to_vec();
        assert!(verify_offer(&order).is_err(), "signed for another target");
    }
}
