//! The node's tests on simulated time.

// A test picks any origin for its simulated time.
#![allow(clippy::disallowed_methods)]

use super::*;
use crate::digest::Digest;
use crate::error::ErrorCode;
use crate::request::{RegistryRequest, parse_request};
use crate::store::StoreEvent;
use http::{HeaderMap, HeaderValue, Method};

fn content(method: Method, path: &str, mirrored: bool) -> ContentRequest {
    let mut headers = HeaderMap::new();
    if mirrored {
        headers.insert("x-spegel-mirrored", HeaderValue::from_static("true"));
    }
    match parse_request(&method, path, &headers).unwrap() {
        RegistryRequest::Content(c) => c,
        other => panic!("not content: {other:?}"),
    }
}

fn drain(n: &mut Node<u32>) -> Vec<Output<u32>> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

fn present(d: &Digest) -> Local {
    Local::Present {
        digest: d.clone(),
        size: 1000,
    }
}

/// A request, and the store's answer to it when the node asks (at once).
fn ask(n: &mut Node<u32>, now: Instant, id: RequestId, req: &ContentRequest, local: Local) {
    n.handle(
        now,
        Input::Request {
            id,
            request: req.clone(),
        },
    )
    .unwrap();
    let asked = n
        .outputs
        .iter()
        .position(|o| matches!(o, Output::StatLocal { request, .. } if *request == id));
    if let Some(i) = asked {
        n.outputs.remove(i);
        n.handle(now, Input::LocalAnswered { request: id, local })
            .unwrap();
    }
}

#[test]
fn local_mirror_and_refusals() {
    let t0 = Instant::now();
    let mut cfg = NodeConfig::new(0u32);
    cfg.filter = RegistryFilter::new(&["http://127.0.0.1:5000"], &[":secret$"]).unwrap();
    let mut n = Node::new(cfg);
    let d = Digest::sha256_of(b"layer");
    let blob = content(
        Method::GET,
        &format!("/v2/test/small/blobs/{d}?ns=127.0.0.1%3A5000"),
        false,
    );
    ask(&mut n, t0, RequestId(1), &blob, present(&d));
    assert_eq!(
        drain(&mut n),
        vec![Output::ServeLocal {
            request: RequestId(1),
            digest: d.clone(),
            size: 1000,
            range: None,
            head: false,
        }]
    );

    // Not local: looked up.
    ask(&mut n, t0, RequestId(2), &blob, Local::Absent);
    let out = drain(&mut n);
    assert!(
        matches!(&out[0], Output::Lookup { key, count: 3, .. } if *key == Key::digest(&d)),
        "{out:?}"
    );

    // A peer's request for something absent: 404, no lookup (no loops).
    let from_peer = content(Method::GET, &format!("/v2/test/small/blobs/{d}"), true);
    ask(&mut n, t0, RequestId(3), &from_peer, Local::Absent);
    let out = drain(&mut n);
    let [Output::Fail { error, .. }] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(error.code, ErrorCode::BlobUnknown);
    assert_eq!(error.status.as_u16(), 404);

    // Registries not mirrored and filtered repositories are refused even when local.
    let other = content(Method::GET, "/v2/x/manifests/v1?ns=ghcr.io", false);
    ask(&mut n, t0, RequestId(4), &other, present(&d));
    let out = drain(&mut n);
    let [Output::Fail { error, .. }] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(error.code, ErrorCode::ManifestUnknown);
    assert!(error.message.contains("not mirrored"));
    let secret = content(
        Method::HEAD,
        "/v2/x/manifests/secret?ns=127.0.0.1%3A5000",
        false,
    );
    ask(&mut n, t0, RequestId(5), &secret, present(&d));
    assert!(matches!(drain(&mut n).as_slice(), [Output::Fail { .. }]));
}

#[test]
fn an_unknown_store_answer_mirrors_or_refuses_peers_with_503() {
    let t0 = Instant::now();
    let mut n = Node::new(NodeConfig::new(0u32));
    let d = Digest::sha256_of(b"layer");
    let own = content(Method::GET, &format!("/v2/x/blobs/{d}"), false);
    ask(&mut n, t0, RequestId(1), &own, Local::Unknown);
    assert!(matches!(drain(&mut n)[0], Output::Lookup { .. }));
    let from_peer = content(Method::GET, &format!("/v2/x/blobs/{d}"), true);
    ask(&mut n, t0, RequestId(2), &from_peer, Local::Unknown);
    let out = drain(&mut n);
    let [Output::Fail { error, .. }] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(error.status.as_u16(), 503);
}

#[test]
fn mirror_miss_becomes_an_oci_404_that_says_why() {
    let t0 = Instant::now();
    let mut n = Node::new(NodeConfig::new(0u32));
    let tag = content(
        Method::HEAD,
        "/v2/test/small/manifests/v1?ns=127.0.0.1%3A5000",
        false,
    );
    ask(&mut n, t0, RequestId(1), &tag, Local::Absent);
    let out = drain(&mut n);
    let Output::Lookup { id, key, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(key.as_str(), "127.0.0.1:5000/test/small:v1");
    n.handle(t0, Input::LookupFinished { lookup: *id }).unwrap();
    let out = drain(&mut n);
    let [Output::Fail { request, error, .. }] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(*request, RequestId(1));
    assert_eq!(error.code, ErrorCode::ManifestUnknown);
    assert_eq!(
        error.message,
        "could not find peer for 127.0.0.1:5000/test/small:v1"
    );
    assert_eq!(n.mirror_counts(), (0, 1));
}

#[test]
fn store_events_drive_advertising_and_recheck_timer() {
    let t0 = Instant::now();
    let mut n = Node::new(NodeConfig::new(0u32));
    assert!(!n.store_connected());
    let target = Digest::sha256_of(b"m");
    n.handle(
        t0,
        Input::Store(StoreEvent::Snapshot(vec![ImageState {
            name: "127.0.0.1:5000/test/small:v1".into(),
            target: target.clone(),
            present: vec![target.clone()],
        }])),
    )
    .unwrap();
    assert!(n.store_connected());
    let out = drain(&mut n);
    assert!(matches!(&out[0], Output::Advertise(k) if k.len() == 2));
    assert_eq!(
        n.poll_timeout(),
        Some((t0 + Duration::from_secs(60), NodeTimeout::Recheck))
    );
    n.handle_timeout(t0 + Duration::from_secs(60));
    assert_eq!(drain(&mut n), vec![Output::RecheckStore]);
}
