//! A detached signature file (`transform sign` writes it, `transform push --signature`
//! reads it): JSON, then its base64 signature and `ed25519:` key, then the verification.
#![no_main]

use dataweaver::control::{self, SignatureFile};
use dataweaver::wire::ModuleOffer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As `transform push --signature` reads it (v1 files are refused by name).
    let Ok(sig) = SignatureFile::parse(data) else {
        return;
    };
    let _ = control::parse_public_key(&sig.key);
    if let Ok(signature) = sig.signature_bytes() {
        let offer = ModuleOffer {
            pipeline: sig.pipeline.clone(),
            version: sig.version.clone(),
            module: b"\0asm".to_vec(),
            signature,
            key: sig.key.clone(),
            seq: sig.seq,
            ..Default::default()
        };
        let _ = control::verify_offer(&offer);
    }
});
