//! speil's HTTP/1.1 codec: pure functions and state machines over byte slices, no IO, no async,
//! no clock (DESIGN §1, "One HTTP/1.1 server path").
//!
//! - [`parse_request`] and [`parse_response`] read a message head with `httparse` and give
//!   `http` types; input that ends before the head does is [`Status::Partial`], not an error, so
//!   a caller reads more and calls again with the longer buffer.
//! - [`request_framing`], [`response_framing`] and [`keep_alive`] decide what follows a head
//!   (RFC 9112 §6 and §9.3).
//! - [`ChunkedDecoder`] decodes a chunked body fed in pieces of any size.
//! - [`encode_response_head`], [`encode_request_head`] and [`encode_chunk`] write heads and
//!   chunks.
//!
//! Limits (head size, header count, body size) are values the caller passes in; policy belongs
//! to the caller, this crate only enforces it. Errors are a small `Copy` enum, [`Error`], that
//! maps to the status a server answers with ([`Error::status`]).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod chunked;
mod encode;
mod framing;
mod head;

pub use chunked::{ChunkedDecoder, Progress};
pub use encode::{encode_chunk, encode_last_chunk, encode_request_head, encode_response_head};
pub use framing::{Framing, keep_alive, request_framing, response_framing};
pub use head::{Limits, Status, parse_request, parse_response};

use http::StatusCode;

/// Why a message cannot be read. Each maps to the status a server answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// The head is longer than the caller's limit.
    #[error("message head too large")]
    HeadTooLarge,
    /// The head has more header fields than the caller's limit.
    #[error("too many header fields")]
    TooManyHeaders,
    /// The head is not HTTP/1.x: bad request or status line, bad header field, bad line ending.
    #[error("malformed message head")]
    Malformed,
    /// `Content-Length` is not one decimal number (repeated, a list, a sign, too large).
    #[error("invalid Content-Length")]
    BadContentLength,
    /// `Transfer-Encoding` is anything but a single `chunked` on HTTP/1.1.
    #[error("unsupported Transfer-Encoding")]
    UnsupportedTransferEncoding,
    /// A chunked body breaks the chunked syntax (size line, missing CRLF, size overflow).
    #[error("malformed chunked body")]
    BadChunk,
    /// A body (or its chunk extensions and trailers) is larger than the caller's limit.
    #[error("message body too large")]
    BodyTooLarge,
}

impl Error {
    /// The status a server answers with.
    pub fn status(self) -> StatusCode {
        match self {
            Error::HeadTooLarge | Error::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Error::Malformed | Error::BadContentLength | Error::BadChunk => StatusCode::BAD_REQUEST,
            Error::UnsupportedTransferEncoding => StatusCode::NOT_IMPLEMENTED,
            Error::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(Error::HeadTooLarge.status().as_u16(), 431);
        assert_eq!(Error::TooManyHeaders.status().as_u16(), 431);
        assert_eq!(Error::Malformed.status().as_u16(), 400);
        assert_eq!(Error::BadContentLength.status().as_u16(), 400);
        assert_eq!(Error::BadChunk.status().as_u16(), 400);
        assert_eq!(Error::UnsupportedTransferEncoding.status().as_u16(), 501);
        assert_eq!(Error::BodyTooLarge.status().as_u16(), 413);
    }
}
