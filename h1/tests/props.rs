//! Property tests: parsing never panics and stays within its input; what is encoded parses
//! back to the same head; chunked bodies decode the same in any split.

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use proptest::prelude::*;
use speil_h1::{
    ChunkedDecoder, Framing, Limits, Status, encode_chunk, encode_last_chunk, encode_request_head,
    encode_response_head, keep_alive, parse_request, parse_response, request_framing,
    response_framing,
};

fn field_name() -> impl Strategy<Value = HeaderName> {
    "[a-z][a-z0-9-]{0,15}"
        .prop_filter("framing and host fields are the encoder's", |n| {
            !matches!(
                n.as_str(),
                "connection" | "content-length" | "transfer-encoding" | "host"
            )
        })
        .prop_map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
}

fn field_value() -> impl Strategy<Value = HeaderValue> {
    "[!-~]([ -~]{0,18}[!-~])?".prop_map(|v| HeaderValue::from_str(&v).unwrap())
}

fn fields() -> impl Strategy<Value = HeaderMap> {
    proptest::collection::vec((field_name(), field_value()), 0..8).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(n, v);
        }
        map
    })
}

fn body_framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        (1u64..u64::MAX).prop_map(Framing::Length),
        Just(Framing::Chunked)
    ]
}

/// Splits `data` into pieces at the given cut points.
fn pieces(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts.into_iter().chain([data.len()]) {
        out.push(data[at..c].to_vec());
        at = c;
    }
    out
}

/// Decodes `pieces` in turn; the decoded body and the bytes consumed, or the error.
fn decode_pieces(pieces: &[Vec<u8>], max: u64) -> Result<(Vec<u8>, usize, bool), speil_h1::Error> {
    let mut d = ChunkedDecoder::new(max);
    let mut out = Vec::new();
    let mut consumed = 0;
    for p in pieces {
        let progress = d.feed(p, &mut out)?;
        assert!(progress.consumed <= p.len());
        consumed += progress.consumed;
        if progress.done {
            return Ok((out, consumed, true));
        }
        assert_eq!(
            progress.consumed,
            p.len(),
            "only the end leaves input unused"
        );
    }
    Ok((out, consumed, false))
}

proptest! {
    #[test]
    fn parsing_never_panics(
        data in proptest::collection::vec(any::<u8>(), 0..600),
        max_head in 0usize..700,
        max_headers in 0usize..10,
    ) {
        let limits = Limits { max_head_bytes: max_head, max_headers };
        if let Ok(Status::Complete((parts, len))) = parse_request(&data, &limits) {
            prop_assert!(len <= data.len() && len <= max_head);
            let _ = request_framing(&parts);
            let _ = keep_alive(parts.version, &parts.headers);
        }
        if let Ok(Status::Complete((parts, len))) = parse_response(&data, &limits) {
            prop_assert!(len <= data.len() && len <= max_head);
            let _ = response_framing(&Method::GET, &parts);
        }
    }

    #[test]
    fn head_like_input_never_panics(
        lines in proptest::collection::vec("[ -~]{0,30}", 0..8),
        first in prop_oneof![Just("GET / HTTP/1.1"), Just("HTTP/1.1 200 OK"), Just("HTTP/1.0 204 x")],
    ) {
        let text = format!("{first}\r\n{}\r\n\r\n", lines.join("\r\n"));
        let limits = Limits::default();
        if let Ok(Status::Complete((parts, len))) = parse_request(text.as_bytes(), &limits) {
            prop_assert!(len <= text.len());
            let _ = request_framing(&parts);
        }
        if let Ok(Status::Complete((parts, len))) = parse_response(text.as_bytes(), &limits) {
            prop_assert!(len <= text.len());
            let _ = response_framing(&Method::HEAD, &parts);
            let _ = response_framing(&Method::GET, &parts);
        }
    }

    #[test]
    fn chunked_never_panics(
        data in proptest::collection::vec(any::<u8>(), 0..400),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
        max in 0u64..1000,
    ) {
        let whole = decode_pieces(std::slice::from_ref(&data), max);
        let split = decode_pieces(&pieces(&data, &cuts), max);
        // Splits change nothing but how far an unfinished body got.
        match (whole, split) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "{a:?} vs {b:?}"),
        }
    }

    #[test]
    fn response_heads_round_trip(
        code in 100u16..1000,
        headers in fields(),
        framing in body_framing(),
        close in any::<bool>(),
    ) {
        let status = StatusCode::from_u16(code).unwrap();
        let mut out = Vec::new();
        encode_response_head(status, &headers, framing, close, &mut out);
        out.extend_from_slice(b"tail");
        let (parts, len) = parse_response(&out, &Limits { max_head_bytes: 4096, max_headers: 16 })
            .unwrap()
            .complete()
            .unwrap();
        prop_assert_eq!(len, out.len() - 4);
        prop_assert_eq!(parts.status, status);
        prop_assert_eq!(parts.version, Version::HTTP_11);
        for name in headers.keys() {
            let want: Vec<_> = headers.get_all(name).iter().collect();
            let got: Vec<_> = parts.headers.get_all(name).iter().collect();
            prop_assert_eq!(want, got);
        }
        prop_assert_eq!(keep_alive(parts.version, &parts.headers), !close);
        let bodiless = status.is_informational() || code == 204 || code == 304;
        let want = if bodiless { Framing::None } else { framing };
        prop_assert_eq!(response_framing(&Method::GET, &parts), Ok(want));
    }

    #[test]
    fn request_heads_round_trip(
        method in prop_oneof![Just(Method::GET), Just(Method::HEAD), Just(Method::PUT)],
        target in "/[a-zA-Z0-9/._:-]{0,40}(\\?[a-z=&]{0,10})?",
        host in "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
        headers in fields(),
        framing in prop_oneof![Just(Framing::None), body_framing()],
        close in any::<bool>(),
    ) {
        let mut out = Vec::new();
        encode_request_head(&method, &target, &host, &headers, framing, close, &mut out).unwrap();
        let (parts, len) = parse_request(&out, &Limits { max_head_bytes: 4096, max_headers: 16 })
            .unwrap()
            .complete()
            .unwrap();
        prop_assert_eq!(len, out.len());
        prop_assert_eq!(&parts.method, &method);
        prop_assert_eq!(parts.uri.to_string(), target);
        prop_assert_eq!(parts.headers["host"].to_str().unwrap(), host);
        prop_assert_eq!(keep_alive(parts.version, &parts.headers), !close);
        prop_assert_eq!(request_framing(&parts), Ok(framing));
    }

    #[test]
    fn chunked_round_trip(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut wire = Vec::new();
        for c in &chunks {
            encode_chunk(c, &mut wire);
        }
        encode_last_chunk(&mut wire);
        let body_end = wire.len();
        wire.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let (body, consumed, done) = decode_pieces(&pieces(&wire, &cuts), 10_000).unwrap();
        prop_assert!(done);
        prop_assert_eq!(consumed, body_end);
        prop_assert_eq!(body, chunks.concat());
    }
}
