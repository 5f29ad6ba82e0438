//! A chunked body decoder (RFC 9112 §7.1) as a state machine fed arbitrary pieces.

use crate::Error;

/// The most bytes of chunk extensions and trailer fields together that a body may carry; they
/// are skipped, so they only cost reading, but they must not be endless.
const MAX_OVERHEAD: u64 = 16 * 1024;

/// What one [`ChunkedDecoder::feed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// How many input bytes were used. Less than the input only when the body ended: the rest
    /// belongs to whatever follows it.
    pub consumed: usize,
    /// The body ended (the last chunk and the trailer section were read).
    pub done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` read so far.
    Size { size: u64, digits: u8 },
    /// Whitespace after the size, before `;` or the line end.
    SizeSpace { size: u64 },
    /// A chunk extension (skipped) up to the line end.
    Extension { size: u64 },
    /// The LF of the size line.
    SizeLf { size: u64 },
    /// Chunk data.
    Data { left: u64 },
    /// The CR after chunk data.
    DataCr,
    /// The LF after chunk data.
    DataLf,
    /// The start of a trailer line (or of the final blank line).
    TrailerStart,
    /// Inside a trailer field (skipped).
    Trailer,
    /// The LF of a trailer line.
    TrailerLf,
    /// The LF of the final blank line.
    EndLf,
    /// The body ended.
    Done,
}

/// Decodes a chunked body: feed it bytes as they come, it appends the data to `out`. Chunk
/// extensions and trailer fields are skipped; a body larger than the caller's bound is
/// [`Error::BodyTooLarge`].
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    max_body: u64,
    body: u64,
    overhead: u64,
}

impl ChunkedDecoder {
    /// A decoder for a body of at most `max_body` decoded bytes.
    pub fn new(max_body: u64) -> Self {
        ChunkedDecoder {
            state: State::Size { size: 0, digits: 0 },
            max_body,
            body: 0,
            overhead: 0,
        }
    }

    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The decoded bytes so far.
    pub fn body_len(&self) -> u64 {
        self.body
    }

    /// Decodes what it can of `input`, appending chunk data to `out`. After an error the
    /// decoder is of no further use.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<Progress, Error> {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            if let State::Data { left } = self.state {
                let avail = input.len() - i;
                let take = usize::try_from(left).map_or(avail, |l| l.min(avail));
                out.extend_from_slice(&input[i..i + take]);
                i += take;
                let left = left - take as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { left }
                };
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = self.step(b)?;
        }
        Ok(Progress {
            consumed: i,
            done: self.state == State::Done,
        })
    }

    fn step(&mut self, b: u8) -> Result<State, Error> {
        Ok(match self.state {
            State::Size { size, digits } => match hex(b) {
                Some(d) => {
                    if size > u64::MAX >> 4 {
                        return Err(Error::BadChunk);
                    }
                    State::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits.saturating_add(1),
                    }
                }
                None if digits == 0 => return Err(Error::BadChunk),
                None => self.after_size(size, b)?,
            },
            State::SizeSpace { size } => self.after_size(size, b)?,
            State::Extension { size } => match b {
                b'\r' => State::SizeLf { size },
                b'\n' => return Err(Error::BadChunk),
                _ => {
                    self.overhead()?;
                    State::Extension { size }
                }
            },
            State::SizeLf { size } => match b {
                b'\n' if size == 0 => State::TrailerStart,
                b'\n' => {
                    self.body = self
                        .body
                        .checked_add(size)
                        .filter(|&n| n <= self.max_body)
                        .ok_or(Error::BodyTooLarge)?;
                    State::Data { left: size }
                }
                _ => return Err(Error::BadChunk),
            },
            State::Data { .. } => unreachable!("data is copied in feed"),
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(Error::BadChunk),
            },
            State::DataLf => match b {
                b'\n' => State::Size { size: 0, digits: 0 },
                _ => return Err(Error::BadChunk),
            },
            State::TrailerStart => match b {
                b'\r' => State::EndLf,
                b'\n' => return Err(Error::BadChunk),
                _ => {
                    self.overhead()?;
                    State::Trailer
                }
            },
            State::Trailer => match b {
                b'\r' => State::TrailerLf,
                b'\n' => return Err(Error::BadChunk),
                _ => {
                    self.overhead()?;
                    State::Trailer
                }
            },
            State::TrailerLf | State::EndLf => match (self.state, b) {
                (State::TrailerLf, b'\n') => State::TrailerStart,
                (_, b'\n') => State::Done,
                _ => return Err(Error::BadChunk),
            },
            State::Done => State::Done,
        })
    }

    /// The byte after a chunk size's digits (and any whitespace).
    fn after_size(&mut self, size: u64, b: u8) -> Result<State, Error> {
        Ok(match b {
            b' ' | b'\t' => {
                self.overhead()?;
                State::SizeSpace { size }
            }
            b';' => State::Extension { size },
            b'\r' => State::SizeLf { size },
            _ => return Err(Error::BadChunk),
        })
    }

    fn overhead(&mut self) -> Result<(), Error> {
        self.overhead += 1;
        if self.overhead > MAX_OVERHEAD {
            Err(Error::BodyTooLarge)
        } else {
            Ok(())
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(input: &[u8], max: u64) -> Result<(Vec<u8>, usize), Error> {
        let mut d = ChunkedDecoder::new(max);
        let mut out = Vec::new();
        let p = d.feed(input, &mut out)?;
        if !p.done {
            return Err(Error::BadChunk);
        }
        Ok((out, p.consumed))
    }

    #[test]
    fn decodes() {
        let body = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(decode(body, 100), Ok((b"abcde".to_vec(), body.len())));
        assert_eq!(
            decode(b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n", 100).unwrap().0,
            b"abc"
        );
        // Upper-case hex, leading zeros, extensions and trailers.
        let body =
            b"0A;name=\"v;x\"\r\n0123456789\r\n000 ; last\r\nExpires: never\r\nX: y\r\n\r\nNEXT";
        assert_eq!(
            decode(body, 100),
            Ok((b"0123456789".to_vec(), body.len() - 4))
        );
    }

    #[test]
    fn byte_by_byte() {
        let body = b"5;x\r\nhello\r\n1\r\n!\r\n0\r\nT: 1\r\n\r\n";
        let mut d = ChunkedDecoder::new(100);
        let mut out = Vec::new();
        for (i, b) in body.iter().enumerate() {
            let p = d.feed(std::slice::from_ref(b), &mut out).unwrap();
            assert_eq!(p.consumed, 1);
            assert_eq!(p.done, i == body.len() - 1, "at {i}");
        }
        assert_eq!(out, b"hello!");
        // Once done, nothing more is consumed.
        assert_eq!(
            d.feed(b"more", &mut out),
            Ok(Progress {
                consumed: 0,
                done: true
            })
        );
    }

    #[test]
    fn refuses() {
        // A size that would overflow u64.
        assert_eq!(
            decode(b"1\r\nx\r\nffffffffffffffff0\r\n", u64::MAX),
            Err(Error::BadChunk)
        );
        assert_eq!(
            decode(b"1\r\nx\r\nffffffffffffffff\r\n", u64::MAX),
            Err(Error::BodyTooLarge)
        );
        assert_eq!(decode(b"zz\r\n", 100), Err(Error::BadChunk));
        assert_eq!(decode(b"\r\n", 100), Err(Error::BadChunk));
        assert_eq!(decode(b"5\r\nab", 100), Err(Error::BadChunk)); // incomplete
        assert_eq!(decode(b"2\r\nabc\r\n", 100), Err(Error::BadChunk));
        assert_eq!(decode(b"2\nab\r\n0\r\n\r\n", 100), Err(Error::BadChunk));
        assert_eq!(decode(b"2\r\nab\n0\r\n\r\n", 100), Err(Error::BadChunk));
        assert_eq!(decode(b"0\r\n\n", 100), Err(Error::BadChunk));
        assert_eq!(decode(b"2 x\r\nab\r\n0\r\n\r\n", 100), Err(Error::BadChunk));
        // The caller's bound, across chunks.
        assert_eq!(
            decode(b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", 5),
            Err(Error::BodyTooLarge)
        );
        assert!(decode(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 5).is_ok());
        // Endless extensions or trailers.
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'x', 20_000));
        assert_eq!(decode(&long, 100), Err(Error::BodyTooLarge));
        let mut long = b"0\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', 20_000));
        assert_eq!(decode(&long, 100), Err(Error::BodyTooLarge));
    }

    #[test]
    fn whitespace_before_extensions() {
        assert_eq!(
            decode(b"2 \t;a=b\r\nab\r\n0 \r\n\r\n", 10).unwrap().0,
            b"ab"
        );
    }
}
