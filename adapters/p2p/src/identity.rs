//! The node's libp2p identity and the optional pre-shared network key.
//!
//! The identity is an Ed25519 key pair kept in `<data-dir>/private.key` as Spegel keeps it: a PEM
//! `PRIVATE KEY` block holding the PKCS#8 encoding of the key (RFC 8410). A node keeps its peer
//! id across restarts, and a data dir written by Spegel keeps its peer id under speil. A key in
//! the libp2p protobuf encoding is read too.
//!
//! The key file is never read or written through a symbolic link (a link planted in the data
//! dir cannot make speil read or overwrite another file): it is opened with `O_NOFOLLOW`, and a
//! new key is written to a temporary file created with `O_EXCL | O_NOFOLLOW`, then renamed. The
//! pre-shared key file is read through links, because Kubernetes mounts Secrets as links into
//! a `..data` directory. [`loose_mode`] tells the caller when either file can be read by
//! others than its owner.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;

/// PKCS#8 (RFC 8410) prefix of an Ed25519 private key: version 0, algorithm id-Ed25519, then an
/// OCTET STRING holding the 32-byte seed as an OCTET STRING.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// File name of the identity key inside the data dir.
pub const PRIVATE_KEY_FILE: &str = "private.key";

/// Failure to load or store the identity or the pre-shared key.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file exists but does not hold a libp2p private key.
    #[error("{path} is not a libp2p private key (delete it to generate a new identity): {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The pre-shared key file is not in the `/key/swarm/psk/1.0.0/` format.
    #[error("{path} is not a pre-shared key file (/key/swarm/psk/1.0.0/ format): {reason}")]
    BadPsk {
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
}

/// Generates a fresh Ed25519 identity (nothing is stored).
pub fn generate() -> Keypair {
    Keypair::generate_ed25519()
}

/// `O_NOFOLLOW` for `OpenOptions::custom_flags`.
fn no_follow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Reads `path` without following a symbolic link at its last component.
fn read_no_follow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(no_follow())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                std::io::Error::other(
                    "it is a symbolic link, and speil reads its identity key only from a \
                     regular file",
                )
            } else {
                e
            }
        })?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// When `path` (followed through links) can be read by its group or by others: a warning
/// that says so, with its mode.
pub fn loose_mode(path: &Path) -> Option<String> {
    let mode = fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{} has mode {mode:04o}: others than its owner can read it; make it 0600 or 0400",
            path.display()
        )
    })
}

/// Loads the identity from `<data_dir>/private.key`, or generates one and saves it there
/// (mode 0600, creating the directory when needed).
pub fn load_or_generate(data_dir: &Path) -> Result<Keypair, IdentityError> {
    let path = data_dir.join(PRIVATE_KEY_FILE);
    match read_no_follow(&path) {
        Ok(bytes) => {
            return decode_key(&bytes).map_err(|reason| IdentityError::BadKey { path, reason });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(IdentityError::Io {
                action: "cannot read",
                path,
                source,
            });
        }
    }
    let keypair = generate();
    let bytes = encode_key(&keypair).map_err(|reason| IdentityError::BadKey {
        path: path.clone(),
        reason,
    })?;
    fs::create_dir_all(data_dir).map_err(|source| IdentityError::Io {
        action: "cannot create directory",
        path: data_dir.to_owned(),
        source,
    })?;
    // Write a temporary file and rename it, so a crash never leaves a half-written key.
    let tmp = data_dir.join(format!(".{PRIVATE_KEY_FILE}.{}.tmp", std::process::id()));
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| IdentityError::Io {
            action,
            path,
            source,
        }
    };
    // Whatever is at the temporary path (a file left by a crash, or a planted link) is
    // removed, not followed; then the file is created anew, never through a link.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot remove", &tmp)(e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(no_follow())
        .mode(0o600)
        .open(&tmp)
        .map_err(io("cannot create", &tmp))?;
    // The mode given to open() is filtered by the umask; make sure of 0600.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io("cannot set permissions of", &tmp))?;
    file.write_all(&bytes).map_err(io("cannot write", &tmp))?;
    file.sync_all().map_err(io("cannot sync", &tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io("cannot rename to", &path))?;
    Ok(keypair)
}

/// Encodes an Ed25519 identity as a PEM `PRIVATE KEY` (PKCS#8) block.
pub fn encode_key(keypair: &Keypair) -> Result<Vec<u8>, String> {
    let ed = keypair
        .clone()
        .try_into_ed25519()
        .map_err(|_| "only Ed25519 identities can be stored".to_owned())?;
    let mut der = PKCS8_ED25519_PREFIX.to_vec();
    der.extend_from_slice(ed.secret().as_ref());
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem.into_bytes())
}

/// Decodes an identity: a PEM `PRIVATE KEY` block with an Ed25519 PKCS#8 key (Spegel's
/// format), or the libp2p protobuf encoding.
pub fn decode_key(bytes: &[u8]) -> Result<Keypair, String> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Keypair::from_protobuf_encoding(bytes)
            .map_err(|e| format!("neither PEM nor a libp2p key: {e}"));
    };
    let text = text.trim();
    let body = text
        .strip_prefix("-----BEGIN PRIVATE KEY-----")
        .and_then(|rest| rest.strip_suffix("-----END PRIVATE KEY-----"))
        .ok_or_else(|| "expected a PEM \"PRIVATE KEY\" block".to_owned())?;
    let b64: String = body.split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| format!("bad base64 in the PEM block: {e}"))?;
    let seed = der
        .strip_prefix(&PKCS8_ED25519_PREFIX[..])
        .filter(|seed| seed.len() == 32)
        .ok_or_else(|| "not an Ed25519 PKCS#8 private key".to_owned())?;
    let mut seed = seed.to_vec();
    Keypair::ed25519_from_bytes(&mut seed).map_err(|e| e.to_string())
}

/// Reads a pre-shared key file in the standard `/key/swarm/psk/1.0.0/` format (as written by
/// `ipfs-swarm-key-gen` and used by k3s).
pub fn load_psk(path: &Path) -> Result<PreSharedKey, IdentityError> {
    let text = fs::read_to_string(path).map_err(|source| IdentityError::Io {
        action: "cannot read",
        path: path.to_owned(),
        source,
    })?;
    parse_psk(&text).map_err(|reason| IdentityError::BadPsk {
        path: path.to_owned(),
        reason,
    })
}

/// Parses the text of a pre-shared key file.
pub fn parse_psk(text: &str) -> Result<PreSharedKey, String> {
    text.trim_end()
        .parse::<PreSharedKey>()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip_and_formats() {
        let keypair = generate();
        let pem = encode_key(&keypair).unwrap();
        let text = std::str::from_utf8(&pem).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
        let back = decode_key(&pem).unwrap();
        assert_eq!(back.public().to_peer_id(), keypair.public().to_peer_id());
        // The libp2p protobuf encoding is accepted too.
        let proto = keypair.to_protobuf_encoding().unwrap();
        let back = decode_key(&proto).unwrap();
        assert_eq!(back.public().to_peer_id(), keypair.public().to_peer_id());
        // The RFC 8410 example key (section 10.3) gives its documented public key.
        let rfc = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let key = decode_key(rfc.as_bytes()).unwrap();
        let public = key.public().try_into_ed25519().unwrap().to_bytes();
        assert_eq!(
            public[..4],
            [0x19, 0xbf, 0x44, 0x09],
            "public key of the RFC 8410 example"
        );
        assert!(decode_key(b"garbage").is_err());
        assert!(decode_key(b"-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----").is_err());
        assert!(
            decode_key(b"-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----").is_err()
        );
    }

    #[test]
    fn the_key_file_is_never_used_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, b"someone else's file").unwrap();
        // A planted link at the temporary path is removed, not written through.
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let tmp = data.join(format!(".{PRIVATE_KEY_FILE}.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&other, &tmp).unwrap();
        let key = load_or_generate(&data).unwrap();
        assert_eq!(std::fs::read(&other).unwrap(), b"someone else's file");
        let stored = data.join(PRIVATE_KEY_FILE);
        assert!(!std::fs::symlink_metadata(&stored).unwrap().is_symlink());
        assert_eq!(
            std::fs::metadata(&stored).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(loose_mode(&stored), None);
        assert_eq!(
            load_or_generate(&data).unwrap().public().to_peer_id(),
            key.public().to_peer_id()
        );
        // A key file that is a link (even to a good key) is refused, with a reason.
        let linked = dir.path().join("linked");
        std::fs::create_dir(&linked).unwrap();
        std::os::unix::fs::symlink(&stored, linked.join(PRIVATE_KEY_FILE)).unwrap();
        let err = load_or_generate(&linked).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn a_readable_key_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psk");
        std::fs::write(&path, b"x").unwrap();
        for (mode, loose) in [(0o600, false), (0o400, false), (0o640, true), (0o644, true)] {
            std::fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let warning = loose_mode(&path);
            assert_eq!(warning.is_some(), loose, "{mode:o}: {warning:?}");
            if let Some(w) = warning {
                assert!(w.contains(&format!("{mode:04o}")), "{w}");
            }
        }
    }

    #[test]
    fn psk_round_trip_and_garbage() {
        let psk = PreSharedKey::new([7u8; 32]);
        let text = psk.to_key_file();
        assert_eq!(
            parse_psk(&text).unwrap().fingerprint().to_string(),
            psk.fingerprint().to_string()
        );
        assert!(parse_psk("").is_err());
        assert!(parse_psk("/key/swarm/psk/1.0.0/\n/base16/\nzz").is_err());
    }
}
