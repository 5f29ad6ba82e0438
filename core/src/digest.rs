//! Content digests (`sha256:<64 hex>` and `sha512:<128 hex>`), validated.
//!
//! `oci-spec` accepts any `algorithm:encoded` pair (even `md5:zz`). speil uses digests as
//! DHT keys and, in the containerd adapter, as file names under the content directory, so
//! only the two registered algorithms with lower-case hex of the exact length are accepted.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

/// A digest algorithm speil accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    /// `sha256`: 64 lower-case hex characters.
    Sha256,
    /// `sha512`: 128 lower-case hex characters.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as it appears before the `:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex-encoded part.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated content digest. Stored in its canonical string form.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    repr: String,
    algorithm: Algorithm,
}

/// Checks bytes that arrive in pieces against a digest ([`Digest::verifier`]).
#[derive(Clone)]
pub struct Verifier {
    want: Digest,
    state: Hasher,
}

#[derive(Clone)]
enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Verifier {
    /// Adds the next piece.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.state {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// Whether everything added hashes to the digest.
    pub fn matches(self) -> bool {
        let hex = match self.state {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        };
        hex == self.want.hex()
    }

    /// The digest the bytes are checked against.
    pub fn digest(&self) -> &Digest {
        &self.want
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("want", &self.want)
            .finish()
    }
}

/// Why a string is not a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `:` separating algorithm and hex.
    #[error("digest has no algorithm separator")]
    MissingSeparator,
    /// An algorithm other than sha256 or sha512.
    #[error("unsupported digest algorithm")]
    UnsupportedAlgorithm,
    /// Encoded part of the wrong length for the algorithm.
    #[error("digest has the wrong length for its algorithm")]
    WrongLength,
    /// Encoded part is not lower-case hex.
    #[error("digest is not lower-case hex")]
    NotLowerHex,
}

impl Digest {
    /// Computes the sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let hash = sha2::Sha256::digest(bytes);
        Digest {
            repr: format!("sha256:{}", hex::encode(hash)),
            algorithm: Algorithm::Sha256,
        }
    }

    /// Computes the digest of `bytes` with `algorithm`.
    pub fn compute(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        match algorithm {
            Algorithm::Sha256 => Digest::sha256_of(bytes),
            Algorithm::Sha512 => Digest {
                repr: format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes))),
                algorithm: Algorithm::Sha512,
            },
        }
    }

    /// Whether `bytes` hash to this digest.
    pub fn verifies(&self, bytes: &[u8]) -> bool {
        Digest::compute(self.algorithm, bytes) == *self
    }

    /// An incremental check of bytes that arrive in pieces against this digest.
    pub fn verifier(&self) -> Verifier {
        let state = match self.algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        };
        Verifier {
            want: self.clone(),
            state,
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex-encoded part (after the `:`). Safe to use as a file name: it is only `[0-9a-f]`.
    pub fn hex(&self) -> &str {
        &self.repr[self.algorithm.as_str().len() + 1..]
    }

    /// The whole digest, `algorithm:hex`.
    pub fn as_str(&self) -> &str {
        &self.repr
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s.split_once(':').ok_or(DigestError::MissingSeparator)?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(DigestError::UnsupportedAlgorithm),
        };
        if hex.len() != algorithm.hex_len() {
            return Err(DigestError::WrongLength);
        }
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::NotLowerHex);
        }
        Ok(Digest {
            repr: s.to_owned(),
            algorithm,
        })
    }
}

impl TryFrom<&str> for Digest {
    type Error = DigestError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repr)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.repr)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.repr)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn computes_and_verifies() {
        let d = Digest::sha256_of(b"");
        assert_eq!(d.as_str(), EMPTY);
        assert!(d.verifies(b""));
        assert!(!d.verifies(b"x"));
        assert_eq!(d.hex().len(), 64);
        let d512 = Digest::compute(Algorithm::Sha512, b"abc");
        assert_eq!(d512.hex().len(), 128);
        assert_eq!(d512.as_str().parse::<Digest>().unwrap(), d512);
    }

    #[test]
    fn rejects_bad_digests() {
        assert_eq!(
            "md5:zz".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm)
        );
        assert_eq!(
            "sha256".parse::<Digest>(),
            Err(DigestError::MissingSeparator)
        );
        assert_eq!(
            "sha256:abc".parse::<Digest>(),
            Err(DigestError::WrongLength)
        );
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        assert_eq!(upper.parse::<Digest>(), Err(DigestError::NotLowerHex));
        let traversal = format!("sha256:../../{}", &EMPTY[13..]);
        assert!(traversal.parse::<Digest>().is_err());
        assert!(
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse::<Digest>()
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn roundtrip(bytes in proptest::collection::vec(any::<u8>(), 0..64), big in any::<bool>()) {
            let alg = if big { Algorithm::Sha512 } else { Algorithm::Sha256 };
            let d = Digest::compute(alg, &bytes);
            prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        }

        #[test]
        fn pieces_verify_as_the_whole(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
            cuts in proptest::collection::vec(any::<usize>(), 0..5),
            big in any::<bool>(),
            flip in any::<Option<usize>>(),
        ) {
            let algorithm = if big { Algorithm::Sha512 } else { Algorithm::Sha256 };
            let d = Digest::compute(algorithm, &bytes);
            let mut body = bytes.clone();
            let flipped = match flip {
                Some(i) if !body.is_empty() => {
                    let i = i % body.len();
                    body[i] ^= 1;
                    true
                }
                _ => false,
            };
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
            cuts.sort_unstable();
            let mut v = d.verifier();
            let mut at = 0;
            for c in cuts.into_iter().chain([body.len()]) {
                v.update(&body[at..c]);
                at = c;
            }
            prop_assert_eq!(v.matches(), !flipped);
        }

        #[test]
        fn never_panics(s in ".{0,200}") {
            if let Ok(d) = s.parse::<Digest>() {
                prop_assert_eq!(d.as_str(), s.as_str());
                prop_assert!(d.hex().bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            }
        }
    }
}
