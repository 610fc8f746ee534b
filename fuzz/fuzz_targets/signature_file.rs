//! A detached signature file (`transform sign` writes it, `transform push --signature`
//! reads it): JSON, then its base64 signature and `ed25519:` key, then the verification.
#![no_main]

use dataweaver::control::{self, SignatureFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sig) = serde_json::from_slice::<SignatureFile>(data) else {
        return;
    };
    let _ = control::parse_public_key(&sig.key);
    if let Ok(bytes) = sig.signature_bytes() {
        let _ = control::verify(&sig.key, b"\0asm", &sig.pipeline, &sig.version, &bytes);
    }
});
