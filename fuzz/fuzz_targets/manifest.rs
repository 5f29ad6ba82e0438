//! Manifests: never panic; whatever parses has a manifest media type and valid child digests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use speil_core::Digest;
use speil_core::manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = manifest::parse(data) {
        assert!(manifest::is_manifest_media_type(m.media_type()));
        for c in m.children() {
            assert!(c.digest.as_str().parse::<Digest>().is_ok());
            assert!(!c.media_type.is_empty());
        }
    }
});
