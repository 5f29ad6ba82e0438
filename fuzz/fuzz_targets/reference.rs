//! Image references: never panic; whatever parses renders back to the same reference.
#![no_main]

use libfuzzer_sys::fuzz_target;
use speil_core::reference::{Reference, is_valid_name, is_valid_registry_host, is_valid_tag};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = (is_valid_name(s), is_valid_tag(s), is_valid_registry_host(s));
    if let Ok(r) = s.parse::<Reference>() {
        let rendered = r.to_string();
        let again: Reference = rendered.parse().expect("a rendered reference parses");
        assert_eq!(again, r);
        assert_eq!(again.to_string(), rendered);
        assert!(is_valid_name(r.repository()));
        assert!(is_valid_registry_host(r.registry()));
        assert!(r.tag().is_none_or(is_valid_tag));
    }
});
