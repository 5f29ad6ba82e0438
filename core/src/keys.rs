//! DHT keys (SPEC.md §3).
//!
//! Tags are advertised as `<registry>/<name>:<tag>`, digests as `sha256:<hex>`. The DHT key is
//! the multihash (sha2-256, code `0x12`, length 32) of the key string's bytes — the multihash
//! inside the CIDv1 raw that Spegel computes, so speil and Spegel nodes find each other's
//! records.

use sha2::Digest as _;

use crate::digest::Digest;

/// Multihash code of sha2-256.
pub const SHA2_256_CODE: u8 = 0x12;

/// A key as speil names it: the string that is hashed into a DHT key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// The key of a tag: `<registry>/<name>:<tag>`.
    pub fn tag(registry: &str, name: &str, tag: &str) -> Key {
        Key(format!("{registry}/{name}:{tag}"))
    }

    /// The key of a digest: the digest itself.
    pub fn digest(digest: &Digest) -> Key {
        Key(digest.as_str().to_owned())
    }

    /// The key string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The DHT record key: the sha2-256 multihash of the key string (34 bytes).
    pub fn multihash(&self) -> [u8; 34] {
        let hash = sha2::Sha256::digest(self.0.as_bytes());
        let mut out = [0u8; 34];
        out[0] = SHA2_256_CODE;
        out[1] = 32;
        out[2..].copy_from_slice(&hash);
        out
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_and_digest_keys() {
        assert_eq!(
            Key::tag("docker.io", "library/alpine", "3.20").as_str(),
            "docker.io/library/alpine:3.20"
        );
        let d = Digest::sha256_of(b"x");
        assert_eq!(Key::digest(&d).as_str(), d.as_str());
    }

    #[test]
    fn multihash_is_sha256_of_key_string() {
        let key = Key::tag("docker.io", "library/alpine", "3.20");
        let mh = key.multihash();
        assert_eq!(mh[0], 0x12);
        assert_eq!(mh[1], 32);
        // sha256("docker.io/library/alpine:3.20"), computed with sha256sum.
        assert_eq!(
            hex::encode(&mh[2..]),
            "75be9c490b21b793193f47be0daf1e1ba283c3a002c8e84091e2c871cc49f219"
        );
        assert_ne!(Key::tag("a", "b", "c").multihash(), mh);
    }
}
