//! Range headers: never panic; parse∘render = id; a resolved range lies inside the blob and a
//! resume range continues exactly where the delivered bytes stopped.
//!
//! Input: 8 bytes of blob size, 8 bytes of "written", then the header value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use speil_core::range::ByteRange;

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = data.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let size = u64_at(data, 0);
    let written = u64_at(data, 8);
    let Ok(value) = std::str::from_utf8(data.get(16..).unwrap_or_default()) else {
        return;
    };
    let Ok(range) = ByteRange::parse(value) else {
        return;
    };
    assert_eq!(ByteRange::parse(&range.to_string()), Ok(range));
    // Small sizes hit the interesting boundaries more often.
    for size in [size, size % 4096] {
        let Ok(res) = range.resolve(size) else {
            assert!(ByteRange::resume(Some(&range), size, written).is_none());
            continue;
        };
        assert!(res.start <= res.end && res.end < size);
        assert_eq!(res.len(), res.end - res.start + 1);
        match ByteRange::resume(Some(&range), size, written) {
            Some(rest) => {
                let rest = rest.resolve(size).expect("a resume range is satisfiable");
                assert_eq!((rest.start, rest.end), (res.start + written, res.end));
            }
            None => assert!(written >= res.len()),
        }
    }
});
