//! Registry requests: never panic; errors are 4xx with a JSON OCI body; whatever parses
//! renders to a path that parses to the same request.
//!
//! Input: one byte choosing the method, then the path and query up to the first `\n`, then
//! header lines `name:value` separated by `\n`.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use speil_core::request::parse_request;

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = match m % 8 {
        0 | 1 | 2 => Method::GET,
        3 | 4 => Method::HEAD,
        5 => Method::PUT,
        6 => Method::DELETE,
        _ => Method::POST,
    };
    let mut lines = rest.split(|&b| b == b'\n');
    let Ok(path) = std::str::from_utf8(lines.next().unwrap_or_default()) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    match parse_request(&method, path, &headers) {
        Ok(request) => {
            let again = parse_request(&method, &request.path_and_query(), &headers)
                .expect("a rendered request parses");
            assert_eq!(again, request);
        }
        Err(e) => {
            assert!(e.status.is_client_error());
            let body: serde_json::Value =
                serde_json::from_slice(&e.body()).expect("the error body is JSON");
            assert_eq!(body["errors"][0]["code"].as_str(), Some(e.code.as_str()));
        }
    }
});
