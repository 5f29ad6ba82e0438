//! The h1 codec: request and response heads, framing and the chunked decoder never panic, and
//! agree with themselves: a complete head lies within the input and the limit, every shorter
//! prefix of it is partial, a parsed response head re-encodes to one that parses the same, and
//! a chunked body decodes the same in any split.
//!
//! Input: one byte choosing the head limit, one byte choosing where to split, then the message.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use speil_h1::{
    ChunkedDecoder, Limits, Status, encode_response_head, keep_alive, parse_request,
    parse_response, request_framing, response_framing,
};

fuzz_target!(|data: &[u8]| {
    let [limit, split, msg @ ..] = data else {
        return;
    };
    let limits = Limits {
        max_head_bytes: if *limit == 0 {
            8192
        } else {
            usize::from(*limit) * 4
        },
        max_headers: if *limit == 0 {
            64
        } else {
            usize::from(limit % 32)
        },
    };
    let cut = usize::from(*split) % (msg.len() + 1);

    match parse_request(msg, &limits) {
        Ok(Status::Complete((parts, len))) => {
            assert!(len <= msg.len() && len <= limits.max_head_bytes);
            assert!(
                matches!(parse_request(&msg[..len], &limits), Ok(Status::Complete((_, n))) if n == len)
            );
            if cut < len {
                assert!(matches!(
                    parse_request(&msg[..cut], &limits),
                    Ok(Status::Partial)
                ));
            }
            let _ = request_framing(&parts);
            let _ = keep_alive(parts.version, &parts.headers);
        }
        Ok(Status::Partial) => {
            assert!(msg.len() < limits.max_head_bytes);
            assert!(matches!(
                parse_request(&msg[..cut], &limits),
                Ok(Status::Partial)
            ));
        }
        Err(_) => {}
    }

    match parse_response(msg, &limits) {
        Ok(Status::Complete((parts, len))) => {
            assert!(len <= msg.len() && len <= limits.max_head_bytes);
            if cut < len {
                assert!(matches!(
                    parse_response(&msg[..cut], &limits),
                    Ok(Status::Partial)
                ));
            }
            for method in [Method::GET, Method::HEAD] {
                if let Ok(framing) = response_framing(&method, &parts) {
                    let mut out = Vec::new();
                    let close = !keep_alive(parts.version, &parts.headers);
                    encode_response_head(parts.status, &parts.headers, framing, close, &mut out);
                    let wide = Limits {
                        max_head_bytes: out.len(),
                        max_headers: parts.headers.len() + 2,
                    };
                    let Ok(Status::Complete((again, n))) = parse_response(&out, &wide) else {
                        panic!(
                            "an encoded head parses: {:?}",
                            String::from_utf8_lossy(&out)
                        );
                    };
                    assert_eq!(n, out.len());
                    assert_eq!(again.status, parts.status);
                    assert_eq!(response_framing(&method, &again), Ok(framing));
                }
            }
        }
        Ok(Status::Partial) => assert!(msg.len() < limits.max_head_bytes),
        Err(_) => {}
    }

    let decode = |pieces: &[&[u8]]| {
        let mut d = ChunkedDecoder::new(u64::from(*limit) * 64);
        let mut out = Vec::new();
        let mut used = 0;
        for p in pieces {
            let progress = d.feed(p, &mut out)?;
            assert!(progress.consumed <= p.len());
            used += progress.consumed;
            if progress.done {
                return Ok((out, used, true));
            }
        }
        Ok::<_, speil_h1::Error>((out, used, false))
    };
    let whole = decode(&[msg]);
    let split = decode(&[&msg[..cut], &msg[cut..]]);
    assert_eq!(whole, split);
    if let Ok((body, used, _)) = whole {
        assert!(used <= msg.len());
        assert!(body.len() as u64 <= u64::from(*limit) * 64);
    }
});
