//! HTTP `Range` requests for blobs (SPEC.md §2): one `bytes=` range of the forms `a-b`, `a-`
//! and `-n`, resolved against the blob's size.
//!
//! A malformed header and a header with several ranges are errors (answered with 416); a range
//! that lies outside the blob is unsatisfiable (416 with `Content-Range: bytes */<size>`).
//! A [`ResolvedRange`] always lies inside `[0, size)`.

use std::fmt;
use std::str::FromStr;

use crate::error::OciError;

/// Longest `Range` header value accepted.
pub const RANGE_HEADER_MAX: usize = 256;

/// One requested byte range, as the client wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ByteRange {
    /// `bytes=a-b`: from `start` to `end`, both inclusive (`start <= end`).
    FromTo {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// `bytes=a-`: from `start` to the end of the blob.
    From {
        /// First byte.
        start: u64,
    },
    /// `bytes=-n`: the last `len` bytes of the blob.
    Suffix {
        /// How many bytes at the end of the blob.
        len: u64,
    },
}

/// Why a `Range` header value is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Longer than [`RANGE_HEADER_MAX`].
    #[error("range header is too long")]
    TooLong,
    /// The unit is not `bytes`.
    #[error("range unit must be bytes")]
    NotBytes,
    /// More than one range (`bytes=0-1,5-6`).
    #[error("only one range per request is supported")]
    MultipleRanges,
    /// Not of the form `a-b`, `a-` or `-n` with decimal numbers that fit in 64 bits.
    #[error("malformed range (expected bytes=a-b, bytes=a- or bytes=-n)")]
    Malformed,
    /// `a-b` with `a > b`.
    #[error("range start is after its end")]
    StartAfterEnd,
}

impl From<RangeError> for OciError {
    fn from(e: RangeError) -> OciError {
        OciError::range_invalid(format!("invalid Range header: {e}"))
    }
}

/// A range that lies outside the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("range not satisfiable for a blob of {size} bytes")]
pub struct Unsatisfiable {
    /// The blob's size.
    pub size: u64,
}

impl From<Unsatisfiable> for OciError {
    fn from(e: Unsatisfiable) -> OciError {
        OciError::range_not_satisfiable(e.size)
    }
}

impl ByteRange {
    /// Parses a `Range` header value (`bytes=a-b`, `bytes=a-`, `bytes=-n`; the unit is
    /// case-insensitive, spaces around the range are allowed).
    pub fn parse(value: &str) -> Result<ByteRange, RangeError> {
        if value.len() > RANGE_HEADER_MAX {
            return Err(RangeError::TooLong);
        }
        let value = value.trim_matches([' ', '\t']);
        let (unit, spec) = value.split_once('=').ok_or(RangeError::Malformed)?;
        if !unit
            .trim_end_matches([' ', '\t'])
            .eq_ignore_ascii_case("bytes")
        {
            return Err(RangeError::NotBytes);
        }
        if spec.contains(',') {
            return Err(RangeError::MultipleRanges);
        }
        let spec = spec.trim_matches([' ', '\t']);
        let (first, last) = spec.split_once('-').ok_or(RangeError::Malformed)?;
        match (first.is_empty(), last.is_empty()) {
            (true, true) => Err(RangeError::Malformed),
            (true, false) => Ok(ByteRange::Suffix { len: number(last)? }),
            (false, true) => Ok(ByteRange::From {
                start: number(first)?,
            }),
            (false, false) => {
                let (start, end) = (number(first)?, number(last)?);
                if start > end {
                    return Err(RangeError::StartAfterEnd);
                }
                Ok(ByteRange::FromTo { start, end })
            }
        }
    }

    /// Resolves the range against a blob of `size` bytes: the end is clamped to `size - 1`;
    /// a start at or beyond `size`, a suffix of zero bytes and any range of an empty blob are
    /// unsatisfiable.
    pub fn resolve(&self, size: u64) -> Result<ResolvedRange, Unsatisfiable> {
        let unsatisfiable = Unsatisfiable { size };
        let last = size.checked_sub(1).ok_or(unsatisfiable)?;
        let (start, end) = match *self {
            ByteRange::FromTo { start, end } => (start, end.min(last)),
            ByteRange::From { start } => (start, last),
            ByteRange::Suffix { len } => {
                if len == 0 {
                    return Err(unsatisfiable);
                }
                (size - len.min(size), last)
            }
        };
        if start > end {
            return Err(unsatisfiable);
        }
        Ok(ResolvedRange { start, end })
    }

    /// The range still to fetch after `written` bytes of the response to `original` (`None`
    /// when the whole blob was asked for) were delivered, for a blob of `size` bytes; `None`
    /// when nothing is left (or `original` is unsatisfiable). Used to resume a blob from
    /// another peer: `bytes=<start+written>-` when the original ran to the end of the blob,
    /// else `bytes=<start+written>-<end>`. The size is known before any byte is written (from
    /// `Content-Length` or `Content-Range`), and it is what makes a suffix range exact.
    pub fn resume(original: Option<&ByteRange>, size: u64, written: u64) -> Option<ByteRange> {
        let resolved = match original {
            Some(r) => r.resolve(size).ok()?,
            None => ResolvedRange::full(size)?,
        };
        let start = resolved.start.checked_add(written)?;
        if start > resolved.end {
            return None;
        }
        Some(match original {
            None | Some(ByteRange::From { .. }) => ByteRange::From { start },
            Some(_) => ByteRange::FromTo {
                start,
                end: resolved.end,
            },
        })
    }
}

impl FromStr for ByteRange {
    type Err = RangeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ByteRange::parse(s)
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ByteRange::FromTo { start, end } => write!(f, "bytes={start}-{end}"),
            ByteRange::From { start } => write!(f, "bytes={start}-"),
            ByteRange::Suffix { len } => write!(f, "bytes=-{len}"),
        }
    }
}

/// A decimal number of at most 19 digits (always fits in a `u64`).
fn number(s: &str) -> Result<u64, RangeError> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RangeError::Malformed);
    }
    s.parse().map_err(|_| RangeError::Malformed)
}

/// A range resolved against a blob's size: `start..=end`, always inside `[0, size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResolvedRange {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
}

impl ResolvedRange {
    /// The whole of a blob of `size` bytes, or `None` when the blob is empty.
    pub fn full(size: u64) -> Option<ResolvedRange> {
        Some(ResolvedRange {
            start: 0,
            end: size.checked_sub(1)?,
        })
    }

    /// Number of bytes in the range (at least 1).
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    /// Always `false`: a resolved range holds at least one byte. (Present for API symmetry
    /// with `len`.)
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `Content-Range` value of a 206 response: `bytes <start>-<end>/<size>`.
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{size}", self.start, self.end)
    }

    /// The request range that asks for exactly these bytes (`bytes=<start>-<end>`).
    pub fn as_byte_range(&self) -> ByteRange {
        ByteRange::FromTo {
            start: self.start,
            end: self.end,
        }
    }

    /// The range still to fetch after `written` bytes of this one were delivered, or `None`
    /// when nothing is left: `bytes=<start+written>-<end>`.
    pub fn resume(&self, written: u64) -> Option<ByteRange> {
        let start = self.start.checked_add(written)?;
        (start <= self.end).then_some(ByteRange::FromTo {
            start,
            end: self.end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Result<ByteRange, RangeError> {
        s.parse()
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(r("bytes=0-99"), Ok(ByteRange::FromTo { start: 0, end: 99 }));
        assert_eq!(r("bytes=5-"), Ok(ByteRange::From { start: 5 }));
        assert_eq!(r("bytes=-10"), Ok(ByteRange::Suffix { len: 10 }));
        assert_eq!(
            r(" Bytes = 1-2 "),
            Ok(ByteRange::FromTo { start: 1, end: 2 })
        );
        assert_eq!(
            r("bytes=18446744073709551615-"),
            Err(RangeError::Malformed),
            "20 digits are refused"
        );
        assert_eq!(
            r("bytes=9999999999999999999-"),
            Ok(ByteRange::From {
                start: 9_999_999_999_999_999_999
            })
        );
    }

    #[test]
    fn rejects_malformed_and_multiple() {
        assert_eq!(r("bytes=0-1,3-4"), Err(RangeError::MultipleRanges));
        assert_eq!(r("items=0-1"), Err(RangeError::NotBytes));
        assert_eq!(r("bytes=5-4"), Err(RangeError::StartAfterEnd));
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=1",
            "bytes=+1-2",
            "bytes=1-2-3",
            "bytes=--1",
        ] {
            assert!(r(bad).is_err(), "{bad:?}");
        }
        assert_eq!(r(&"1".repeat(300)), Err(RangeError::TooLong));
        let e: OciError = RangeError::MultipleRanges.into();
        assert_eq!(e.status.as_u16(), 416);
    }

    #[test]
    fn resolves_and_clamps() {
        let fr = |start, end| ResolvedRange { start, end };
        assert_eq!(r("bytes=0-99").unwrap().resolve(50), Ok(fr(0, 49)));
        assert_eq!(r("bytes=10-").unwrap().resolve(50), Ok(fr(10, 49)));
        assert_eq!(r("bytes=-10").unwrap().resolve(50), Ok(fr(40, 49)));
        assert_eq!(r("bytes=-100").unwrap().resolve(50), Ok(fr(0, 49)));
        assert_eq!(r("bytes=49-49").unwrap().resolve(50), Ok(fr(49, 49)));
        let unsat = Err(Unsatisfiable { size: 50 });
        assert_eq!(r("bytes=50-").unwrap().resolve(50), unsat);
        assert_eq!(r("bytes=50-60").unwrap().resolve(50), unsat);
        assert_eq!(r("bytes=-0").unwrap().resolve(50), unsat);
        for s in ["bytes=0-", "bytes=0-0", "bytes=-1"] {
            assert_eq!(r(s).unwrap().resolve(0), Err(Unsatisfiable { size: 0 }));
        }
        let ok = fr(40, 49);
        assert_eq!(ok.len(), 10);
        assert_eq!(ok.content_range(50), "bytes 40-49/50");
        let e: OciError = Unsatisfiable { size: 50 }.into();
        assert_eq!(e.extra_headers()[0].1, "bytes */50");
    }

    #[test]
    fn renders_back() {
        for s in ["bytes=0-99", "bytes=5-", "bytes=-10"] {
            assert_eq!(r(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn resume_ranges() {
        let resume = |orig: Option<&str>, size, written| {
            let orig = orig.map(|o| r(o).unwrap());
            ByteRange::resume(orig.as_ref(), size, written).map(|r| r.to_string())
        };
        assert_eq!(
            resume(Some("bytes=10-19"), 100, 4).as_deref(),
            Some("bytes=14-19")
        );
        assert_eq!(
            resume(Some("bytes=10-19"), 100, 9).as_deref(),
            Some("bytes=19-19")
        );
        assert_eq!(resume(Some("bytes=10-19"), 100, 10), None);
        // The end is the clamped one.
        assert_eq!(
            resume(Some("bytes=10-999"), 100, 5).as_deref(),
            Some("bytes=15-99")
        );
        assert_eq!(resume(None, 1000, 100).as_deref(), Some("bytes=100-"));
        assert_eq!(resume(None, 1000, 1000), None);
        assert_eq!(resume(None, 0, 0), None);
        assert_eq!(
            resume(Some("bytes=5-"), 100, 3).as_deref(),
            Some("bytes=8-")
        );
        // Suffixes become explicit, also when longer than the blob.
        assert_eq!(
            resume(Some("bytes=-10"), 50, 4).as_deref(),
            Some("bytes=44-49")
        );
        assert_eq!(
            resume(Some("bytes=-500"), 50, 4).as_deref(),
            Some("bytes=4-49")
        );
        assert_eq!(resume(Some("bytes=-10"), 50, 10), None);
        assert_eq!(resume(Some("bytes=60-"), 50, 0), None);
        assert_eq!(resume(None, u64::MAX, u64::MAX), None);
        let res = ResolvedRange { start: 40, end: 49 };
        assert_eq!(
            res.resume(4),
            Some(ByteRange::FromTo { start: 44, end: 49 })
        );
        assert_eq!(res.resume(10), None);
        assert_eq!(ResolvedRange::full(0), None);
        assert_eq!(
            ResolvedRange::full(3),
            Some(ResolvedRange { start: 0, end: 2 })
        );
    }
}
