//! The node's libp2p identity and the optional pre-shared network key.
//!
//! The identity is an Ed25519 key pair kept in `<data-dir>/private.key` as Spegel keeps it: a PEM
//! `PRIVATE KEY` block holding the PKCS#8 encoding of the key (RFC 8410). A node keeps its peer
//! id across restarts, and a data dir written by Spegel keeps its peer id under speil. A key in
//! the libp2p protobuf encoding is read too.

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

/// Loads the identity from `<data_dir>/private.key`, or generates one and saves it there
/// (mode 0600, creating the directory when needed).
pub fn load_or_generate(data_dir: &Path) -> Result<Keypair, IdentityError> {
    let path = data_dir.join(PRIVATE_KEY_FILE);
    match fs::read(&path) {
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
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
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
