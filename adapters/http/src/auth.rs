//! Optional basic auth (Spegel compatible): when the directory holds `username` and
//! `password`, every `/v2` request must carry them, and peer fetches send them too.

use std::io;
use std::path::Path;

use base64::Engine as _;
use http::{HeaderMap, HeaderValue};

/// Spegel's location of the credentials.
pub const DEFAULT_DIR: &str = "/etc/secrets/basic-auth";

/// The expected credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    expected: Vec<u8>,
    header: HeaderValue,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

impl Credentials {
    /// Credentials from a user name and a password.
    pub fn new(
        username: &str,
        password: &str,
    ) -> Result<Credentials, http::header::InvalidHeaderValue> {
        let expected = format!("{username}:{password}").into_bytes();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&expected);
        let header = HeaderValue::from_str(&format!("Basic {encoded}"))?;
        Ok(Credentials { expected, header })
    }

    /// Reads `<dir>/username` and `<dir>/password` (a trailing newline is dropped). `Ok(None)`
    /// when either file does not exist: auth is off.
    pub fn load(dir: &Path) -> io::Result<Option<Credentials>> {
        let read = |name: &str| match std::fs::read_to_string(dir.join(name)) {
            Ok(s) => Ok(Some(s.trim_end_matches(['\r', '\n']).to_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", dir.join(name).display()),
            )),
        };
        let (Some(user), Some(pass)) = (read("username")?, read("password")?) else {
            return Ok(None);
        };
        Credentials::new(&user, &pass).map(Some).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "basic auth credentials contain characters not allowed in a header",
            )
        })
    }

    /// The `Authorization` value to send to peers.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// Whether `headers` carry these credentials (compared in constant time).
    pub fn check(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return false;
        };
        let value = value.as_bytes();
        let Some(encoded) = value
            .get(..6)
            .filter(|scheme| scheme.eq_ignore_ascii_case(b"basic "))
            .map(|_| value[6..].trim_ascii())
        else {
            return false;
        };
        let Ok(given) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return false;
        };
        constant_time_eq(&given, &self.expected)
    }
}

/// Compares without an early exit on the first differing byte (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_right_credentials() {
        let c = Credentials::new("user", "secret").unwrap();
        let mut h = HeaderMap::new();
        assert!(!c.check(&h));
        h.insert(http::header::AUTHORIZATION, c.header().clone());
        assert!(c.check(&h));
        let wrong = Credentials::new("user", "secreT").unwrap();
        h.insert(http::header::AUTHORIZATION, wrong.header().clone());
        assert!(!c.check(&h));
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Basic !!!"),
        );
        assert!(!c.check(&h));
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer x"),
        );
        assert!(!c.check(&h));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(constant_time_eq(b"abc", b"abc"));
    }

    #[test]
    fn load_reads_both_files_or_nothing() {
        let dir = std::env::temp_dir().join(format!("speil-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(Credentials::load(&dir).unwrap(), None);
        std::fs::write(dir.join("username"), "u\n").unwrap();
        assert_eq!(Credentials::load(&dir).unwrap(), None);
        std::fs::write(dir.join("password"), "p\n").unwrap();
        assert_eq!(
            Credentials::load(&dir).unwrap(),
            Some(Credentials::new("u", "p").unwrap())
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
