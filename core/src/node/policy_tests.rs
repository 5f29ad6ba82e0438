//! The policies the adapters used to hold, on simulated time: the peer address, the range a
//! fetch sends, local ranges (and 416), the store budget and the stall watchdog.

// A test picks any origin for its simulated time.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::digest::Digest;
use crate::error::ErrorCode;
use crate::mirror::{ContentRange, FetchFailure, FetchId, FetchRange, FetchResponse, LookupId};
use crate::range::ResolvedRange;
use crate::request::{RegistryRequest, parse_request};

const SELF: u32 = 0;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn addr(peer: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, peer], port))
}

fn blob() -> Digest {
    Digest::sha256_of(b"layer")
}

fn request(method: Method, path: &str, range: Option<&str>, mirrored: bool) -> ContentRequest {
    let mut headers = HeaderMap::new();
    if let Some(r) = range {
        headers.insert(http::header::RANGE, HeaderValue::from_str(r).unwrap());
    }
    if mirrored {
        headers.insert("x-spegel-mirrored", HeaderValue::from_static("true"));
    }
    match parse_request(&method, path, &headers).unwrap() {
        RegistryRequest::Content(c) => c,
        other => panic!("not content: {other:?}"),
    }
}

fn blob_request(range: Option<&str>) -> ContentRequest {
    let path = format!("/v2/x/blobs/{}?ns=127.0.0.1%3A5000", blob());
    request(Method::GET, &path, range, false)
}

fn drain(n: &mut Node<u32>) -> Vec<Output<u32>> {
    std::iter::from_fn(|| n.poll_output()).collect()
}

fn node() -> Node<u32> {
    Node::new(NodeConfig::new(SELF))
}

/// A request the store does not hold: the node asks the store, then looks it up.
fn mirrored(n: &mut Node<u32>, now: Instant, id: u64, req: ContentRequest) -> LookupId {
    let rid = RequestId(id);
    n.handle(
        now,
        Input::Request {
            id: rid,
            request: req,
        },
    )
    .unwrap();
    let out = drain(n);
    assert!(
        matches!(out.as_slice(), [Output::StatLocal { request, .. }] if *request == rid),
        "{out:?}"
    );
    n.handle(
        now,
        Input::LocalAnswered {
            request: rid,
            local: Local::Absent,
        },
    )
    .unwrap();
    let out = drain(n);
    match out.as_slice() {
        [Output::Lookup { id, .. }] => *id,
        other => panic!("{other:?}"),
    }
}

/// A fetch command, as (id, peer, addr, method, path, range).
type Started = (FetchId, u32, SocketAddr, Method, String, FetchRange);

fn fetches(out: &[Output<u32>]) -> Vec<Started> {
    out.iter()
        .filter_map(|o| match o {
            Output::Fetch {
                id,
                peer,
                addr,
                method,
                path,
                range,
                ..
            } => Some((*id, *peer, *addr, method.clone(), path.clone(), *range)),
            _ => None,
        })
        .collect()
}

/// Reports that request 1's pipe stopped after `written` bytes, at `at`; the fetches that
/// follow.
fn interrupted(n: &mut Node<u32>, at: Instant, written: u64) -> Vec<Started> {
    n.handle(
        at,
        Input::PipeInterrupted {
            request: RequestId(1),
            written,
        },
    )
    .unwrap();
    fetches(&drain(n))
}

/// `bytes=start-end`.
fn range(start: u64, end: u64) -> FetchRange {
    FetchRange::FromTo { start, end }
}

fn ok_200(len: u64) -> FetchResponse {
    FetchResponse {
        status: 200,
        digest: Some(blob().to_string()),
        content_length: Some(len),
        content_range: None,
    }
}

// ---- the peer's address ----

#[test]
fn a_peer_is_dialled_at_its_addresses_in_order() {
    let t0 = Instant::now();
    let mut n = node();
    let lookup = mirrored(&mut n, t0, 1, blob_request(None));
    let providers = vec![(7, vec![addr(7, 5000), addr(7, 5001)])];
    n.handle(t0, Input::Providers { lookup, providers })
        .unwrap();
    n.handle(t0, Input::LookupFinished { lookup }).unwrap();
    let f = fetches(&drain(&mut n));
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].1, f[0].2), (7, addr(7, 5000)));
    // The first address refuses: the same peer, at its next address.
    let why = FetchFailure::Connect("refused".into());
    n.handle(t0 + ms(1), Input::FetchFailed { fetch: f[0].0, why })
        .unwrap();
    let g = fetches(&drain(&mut n));
    assert_eq!(g.len(), 1);
    assert_eq!((g[0].1, g[0].2), (7, addr(7, 5001)));
    // That one does not connect within the dial budget: nothing is left, the request ends.
    assert_eq!(
        n.poll_timeout(),
        Some((t0 + ms(201), NodeTimeout::Mirror(TimeoutReason::Dial)))
    );
    n.handle_timeout(t0 + ms(201));
    let out = drain(&mut n);
    assert!(out.contains(&Output::CancelFetch { id: g[0].0 }), "{out:?}");
    let fail = out.iter().find_map(|o| match o {
        Output::Fail { error, reason, .. } => Some((error.message.clone(), *reason)),
        _ => None,
    });
    let key = Key::digest(&blob());
    assert_eq!(
        fail,
        Some((
            format!("all 2 attempts failed for {key}"),
            crate::FailReason::AllAttemptsFailed
        ))
    );
}

#[test]
fn a_fresh_peer_comes_before_a_second_address() {
    let t0 = Instant::now();
    let mut n = node();
    let lookup = mirrored(&mut n, t0, 1, blob_request(None));
    let providers = vec![
        (1, vec![addr(1, 5000), addr(1, 5001)]),
        (2, vec![addr(2, 5000), addr(2, 5001)]),
    ];
    n.handle(t0, Input::Providers { lookup, providers })
        .unwrap();
    let first = fetches(&drain(&mut n));
    let why = || FetchFailure::Connect("refused".into());
    n.handle(
        t0,
        Input::FetchFailed {
            fetch: first[0].0,
            why: why(),
        },
    )
    .unwrap();
    let second = fetches(&drain(&mut n));
    assert_ne!(second[0].1, first[0].1, "the other peer first");
    assert_eq!(second[0].2.port(), 5000);
    n.handle(
        t0,
        Input::FetchFailed {
            fetch: second[0].0,
            why: why(),
        },
    )
    .unwrap();
    let third = fetches(&drain(&mut n));
    assert_eq!(third[0].2.port(), 5001, "then second addresses");
}

#[test]
fn a_peer_that_answered_or_broke_is_not_asked_again() {
    let t0 = Instant::now();
    let mut n = node();
    let lookup = mirrored(&mut n, t0, 1, blob_request(None));
    let providers = vec![(1, vec![addr(1, 5000), addr(1, 5001)])];
    n.handle(t0, Input::Providers { lookup, providers })
        .unwrap();
    n.handle(t0, Input::LookupFinished { lookup }).unwrap();
    let f = fetches(&drain(&mut n));
    n.handle(t0, Input::FetchConnected { fetch: f[0].0 })
        .unwrap();
    let why = FetchFailure::Broken("reset".into());
    n.handle(t0, Input::FetchFailed { fetch: f[0].0, why })
        .unwrap();
    let out = drain(&mut n);
    assert!(fetches(&out).is_empty(), "{out:?}");
    assert!(matches!(out.as_slice(), [Output::Fail { .. }]), "{out:?}");
}

#[test]
fn providers_without_addresses_are_ignored_and_new_addresses_are_merged() {
    let t0 = Instant::now();
    let mut n = node();
    let lookup = mirrored(&mut n, t0, 1, blob_request(None));
    n.handle(
        t0,
        Input::Providers {
            lookup,
            providers: vec![(1, vec![]), (SELF, vec![addr(0, 5000)])],
        },
    )
    .unwrap();
    assert!(drain(&mut n).is_empty(), "nobody to dial");
    // Peer 1 reported again, now with an address (twice): dialled once, there.
    n.handle(
        t0,
        Input::Providers {
            lookup,
            providers: vec![(1, vec![addr(1, 5000), addr(1, 5000)])],
        },
    )
    .unwrap();
    let f = fetches(&drain(&mut n));
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].1, f[0].2), (1, addr(1, 5000)));
    let why = FetchFailure::Connect("refused".into());
    n.handle(t0, Input::FetchFailed { fetch: f[0].0, why })
        .unwrap();
    n.handle(t0, Input::LookupFinished { lookup }).unwrap();
    let out = drain(&mut n);
    assert!(
        fetches(&out).is_empty(),
        "the duplicate was merged: {out:?}"
    );
}

// ---- the range a fetch sends ----

fn first_fetch(req: ContentRequest) -> Started {
    let t0 = Instant::now();
    let mut n = node();
    let lookup = mirrored(&mut n, t0, 1, req);
    let providers = vec![(1, vec![addr(1, 5000)])];
    n.handle(t0, Input::Providers { lookup, providers })
        .unwrap();
    fetches(&drain(&mut n)).remove(0)
}

#[test]
fn fetches_name_method_path_and_the_exact_range() {
    let path = format!("/v2/x/blobs/{}?ns=127.0.0.1%3A5000", blob());
    let f = first_fetch(blob_request(None));
    assert_eq!(
        (f.3, f.4.as_str(), f.5),
        (Method::GET, path.as_str(), FetchRange::Whole)
    );
    assert_eq!(f.5.header_value(), None);

    let f = first_fetch(blob_request(Some("bytes=100-199")));
    assert_eq!(f.5, range(100, 199));
    assert_eq!(f.5.header_value().as_deref(), Some("bytes=100-199"));

    let f = first_fetch(blob_request(Some("bytes=5-")));
    assert_eq!(f.5, FetchRange::From { start: 5 });
    assert_eq!(f.5.header_value().as_deref(), Some("bytes=5-"));

    let f = first_fetch(blob_request(Some("bytes=-10")));
    assert_eq!(f.5, FetchRange::Suffix { len: 10 });
    assert_eq!(f.5.header_value().as_deref(), Some("bytes=-10"));

    let head = request(
        Method::HEAD,
        "/v2/x/manifests/v1?ns=127.0.0.1%3A5000",
        None,
        false,
    );
    let f = first_fetch(head);
    assert_eq!(f.3, Method::HEAD);
    assert_eq!(f.4, "/v2/x/manifests/v1?ns=127.0.0.1%3A5000");
    assert_eq!(f.5, FetchRange::Whole);
}

/// A blob relayed from a peer: (node, request, serving fetch, time the body started).
fn serving(client_range: Option<&str>, resp: FetchResponse) -> (Node<u32>, FetchId, Instant) {
    let t0 = Instant::now();
    let mut n = node();
    let lookup = mirrored(&mut n, t0, 1, blob_request(client_range));
    let providers = vec![
        (1, vec![addr(1, 5000)]),
        (2, vec![addr(2, 5000)]),
        (3, vec![addr(3, 5000)]),
    ];
    // The lookup stays open (no cache expiry timer to step over).
    n.handle(t0, Input::Providers { lookup, providers })
        .unwrap();
    let f = fetches(&drain(&mut n))[0].0;
    n.handle(t0, Input::FetchConnected { fetch: f }).unwrap();
    n.handle(
        t0 + ms(2),
        Input::FetchResponded {
            fetch: f,
            response: resp,
        },
    )
    .unwrap();
    let out = drain(&mut n);
    assert!(
        matches!(out.as_slice(), [Output::Serve { request, fetch, .. }] if *request == RequestId(1) && *fetch == f),
        "{out:?}"
    );
    (n, f, t0 + ms(2))
}

#[test]
fn a_resumed_fetch_asks_for_the_rest_from_where_the_client_stopped() {
    let (mut n, first, t) = serving(None, ok_200(1000));
    let f = interrupted(&mut n, t, 400);
    assert_eq!(f.len(), 1);
    assert_ne!(f[0].0, first);
    assert_eq!(f[0].5, range(400, 999));
    assert_eq!(f[0].5.header_value().as_deref(), Some("bytes=400-999"));

    // A client range: the resume keeps its end and starts after what was written.
    let part = FetchResponse {
        status: 206,
        digest: Some(blob().to_string()),
        content_length: Some(51),
        content_range: Some(ContentRange {
            start: 50,
            end: 100,
            size: 1000,
        }),
    };
    let (mut n, _, t) = serving(Some("bytes=50-100"), part);
    let f = interrupted(&mut n, t, 20);
    assert_eq!(f[0].5, range(70, 100));
}

// ---- local answers ----

fn local_answer(req: ContentRequest, size: u64) -> Vec<Output<u32>> {
    let t0 = Instant::now();
    let mut n = node();
    n.handle(
        t0,
        Input::Request {
            id: RequestId(1),
            request: req,
        },
    )
    .unwrap();
    drain(&mut n);
    let local = Local::Present {
        digest: blob(),
        size,
    };
    n.handle(
        t0,
        Input::LocalAnswered {
            request: RequestId(1),
            local,
        },
    )
    .unwrap();
    drain(&mut n)
}

#[test]
fn local_content_is_served_with_its_size_and_resolved_range() {
    let serve = |range| {
        vec![Output::ServeLocal {
            request: RequestId(1),
            digest: blob(),
            size: 1000,
            range,
            head: false,
        }]
    };
    assert_eq!(local_answer(blob_request(None), 1000), serve(None));
    assert_eq!(
        local_answer(blob_request(Some("bytes=10-2000")), 1000),
        serve(Some(ResolvedRange {
            start: 10,
            end: 999
        }))
    );
    assert_eq!(
        local_answer(blob_request(Some("bytes=-100")), 1000),
        serve(Some(ResolvedRange {
            start: 900,
            end: 999
        }))
    );
    // HEAD of a manifest: no range, headers only.
    let head = request(
        Method::HEAD,
        "/v2/x/manifests/v1?ns=127.0.0.1%3A5000",
        None,
        true,
    );
    assert_eq!(
        local_answer(head, 500),
        vec![Output::ServeLocal {
            request: RequestId(1),
            digest: blob(),
            size: 500,
            range: None,
            head: true,
        }]
    );
}

#[test]
fn a_local_range_outside_the_blob_is_a_416() {
    let out = local_answer(blob_request(Some("bytes=1000-")), 1000);
    let [Output::Fail { error, reason, .. }] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(error.status.as_u16(), 416);
    assert_eq!(error.code, ErrorCode::RangeInvalid);
    assert_eq!(*reason, crate::FailReason::RangeNotSatisfiable);
    assert_eq!(
        error.extra_headers()[0].1,
        HeaderValue::from_static("bytes */1000")
    );
}

#[test]
fn a_local_manifest_over_4_mib_is_refused() {
    let m = request(
        Method::GET,
        "/v2/x/manifests/v1?ns=127.0.0.1%3A5000",
        None,
        false,
    );
    let out = local_answer(m, 4 * 1024 * 1024 + 1);
    let [Output::Fail { error, reason, .. }] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(error.code, ErrorCode::ManifestUnknown);
    assert_eq!(*reason, crate::FailReason::TooLarge);
}

// ---- the store budget ----

#[test]
fn the_store_is_asked_about_tags_and_digests() {
    let t0 = Instant::now();
    let mut n = node();
    let tag = request(
        Method::GET,
        "/v2/test/small/manifests/v1?ns=127.0.0.1%3A5000",
        None,
        false,
    );
    n.handle(
        t0,
        Input::Request {
            id: RequestId(1),
            request: tag,
        },
    )
    .unwrap();
    n.handle(
        t0,
        Input::Request {
            id: RequestId(2),
            request: blob_request(None),
        },
    )
    .unwrap();
    assert_eq!(
        drain(&mut n),
        vec![
            Output::StatLocal {
                request: RequestId(1),
                what: StatTarget::Tag {
                    image: "127.0.0.1:5000/test/small:v1".into()
                },
            },
            Output::StatLocal {
                request: RequestId(2),
                what: StatTarget::Digest(blob()),
            },
        ]
    );
    // The id is taken while the store is asked.
    assert_eq!(
        n.handle(
            t0,
            Input::Request {
                id: RequestId(2),
                request: blob_request(None),
            },
        ),
        Err(MirrorError::DuplicateRequest(RequestId(2)))
    );
    // A client that leaves while the store is asked: nothing more for it, no timer.
    n.handle(
        t0,
        Input::RequestClosed {
            request: RequestId(1),
        },
    )
    .unwrap();
    n.handle(
        t0,
        Input::RequestClosed {
            request: RequestId(2),
        },
    )
    .unwrap();
    assert!(drain(&mut n).is_empty());
    assert_eq!(n.poll_timeout(), None);
}

#[test]
fn a_store_that_does_not_answer_in_time_counts_as_unknown() {
    let t0 = Instant::now();
    let mut n = node();
    n.handle(
        t0,
        Input::Request {
            id: RequestId(1),
            request: blob_request(None),
        },
    )
    .unwrap();
    let peer = format!("/v2/x/blobs/{}", blob());
    n.handle(
        t0 + ms(10),
        Input::Request {
            id: RequestId(2),
            request: request(Method::GET, &peer, None, true),
        },
    )
    .unwrap();
    drain(&mut n);
    assert_eq!(
        n.poll_timeout(),
        Some((t0 + ms(3000), NodeTimeout::StoreAnswer))
    );
    n.handle_timeout(t0 + ms(2999));
    assert!(drain(&mut n).is_empty(), "early timeouts are harmless");
    // The own client's request is mirrored.
    n.handle_timeout(t0 + ms(3000));
    let out = drain(&mut n);
    assert!(matches!(out.as_slice(), [Output::Lookup { .. }]), "{out:?}");
    // The peer's gets a 503.
    assert_eq!(
        n.poll_timeout().map(|(t, _)| t),
        Some(t0 + ms(3010)),
        "the second store budget"
    );
    n.handle_timeout(t0 + ms(3010));
    let out = drain(&mut n);
    let [Output::Fail { error, reason, .. }] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert_eq!(error.status.as_u16(), 503);
    assert_eq!(*reason, crate::FailReason::StoreUnavailable);
    // The store's late answer is a stale report: an error, and nothing changes.
    let late = Input::LocalAnswered {
        request: RequestId(1),
        local: Local::Present {
            digest: blob(),
            size: 1,
        },
    };
    assert_eq!(
        n.handle(t0 + ms(3100), late),
        Err(MirrorError::UnknownRequest(RequestId(1)))
    );
    assert!(drain(&mut n).is_empty());
    assert_eq!(n.mirror().active_requests(), 1);
}

// ---- the stall watchdog ----

#[test]
fn a_body_that_keeps_moving_is_never_interrupted() {
    let (mut n, _, t) = serving(None, ok_200(1_000_000));
    let r = RequestId(1);
    let mut now = t;
    for i in 1..=10u64 {
        let (at, why) = n.poll_timeout().unwrap();
        assert_eq!(
            (at, why),
            (now + ms(5000), NodeTimeout::Mirror(TimeoutReason::Stall))
        );
        now = at;
        n.handle_timeout(now);
        assert_eq!(drain(&mut n), vec![Output::PollProgress { request: r }]);
        assert_eq!(
            n.poll_timeout(),
            Some((
                now + ms(5000),
                NodeTimeout::Mirror(TimeoutReason::ProgressAnswer)
            ))
        );
        // 64 KiB per period is enough by default.
        n.handle(
            now,
            Input::PipeProgress {
                request: r,
                written: i * 64 * 1024,
            },
        )
        .unwrap();
        assert!(drain(&mut n).is_empty());
    }
    n.handle(now, Input::PipeFinished { request: r }).unwrap();
    assert_eq!(n.poll_timeout(), None);
}

#[test]
fn a_stalled_body_is_interrupted_and_resumed_where_the_client_stopped() {
    let (mut n, first, t) = serving(None, ok_200(1_000_000));
    let r = RequestId(1);
    n.handle_timeout(t + ms(5000));
    assert_eq!(drain(&mut n), vec![Output::PollProgress { request: r }]);
    n.handle(
        t + ms(5000),
        Input::PipeProgress {
            request: r,
            written: 300_000,
        },
    )
    .unwrap();
    assert!(drain(&mut n).is_empty());
    n.handle_timeout(t + ms(10_000));
    assert_eq!(drain(&mut n), vec![Output::PollProgress { request: r }]);
    // No byte since the last poll: the peer's body is stopped.
    n.handle(
        t + ms(10_000),
        Input::PipeProgress {
            request: r,
            written: 300_000,
        },
    )
    .unwrap();
    assert_eq!(drain(&mut n), vec![Output::Interrupt { request: r }]);
    assert_eq!(
        n.poll_timeout(),
        Some((
            t + ms(15_000),
            NodeTimeout::Mirror(TimeoutReason::InterruptAnswer)
        ))
    );
    // The pipe reports how far it got (one more byte got through): resumed from there, from
    // another peer.
    let f = interrupted(&mut n, t + ms(10_001), 300_001);
    assert_eq!(f.len(), 1);
    assert_ne!(f[0].0, first);
    assert_eq!(f[0].5, range(300_001, 999_999));
    // The continuation is watched from the bytes already written.
    n.handle(t + ms(10_002), Input::FetchConnected { fetch: f[0].0 })
        .unwrap();
    let rest = FetchResponse {
        status: 206,
        digest: Some(blob().to_string()),
        content_length: Some(699_999),
        content_range: Some(ContentRange {
            start: 300_001,
            end: 999_999,
            size: 1_000_000,
        }),
    };
    n.handle(
        t + ms(10_003),
        Input::FetchResponded {
            fetch: f[0].0,
            response: rest,
        },
    )
    .unwrap();
    assert_eq!(
        drain(&mut n),
        vec![Output::Continue {
            request: r,
            fetch: f[0].0
        }]
    );
    n.handle_timeout(t + ms(15_003));
    assert_eq!(drain(&mut n), vec![Output::PollProgress { request: r }]);
    n.handle(
        t + ms(15_003),
        Input::PipeProgress {
            request: r,
            written: 300_001,
        },
    )
    .unwrap();
    assert_eq!(drain(&mut n), vec![Output::Interrupt { request: r }]);
}

#[test]
fn an_unanswered_poll_interrupts_and_an_unreported_interrupt_aborts() {
    let (mut n, _, t) = serving(None, ok_200(1000));
    let r = RequestId(1);
    n.handle_timeout(t + ms(5000));
    assert_eq!(drain(&mut n), vec![Output::PollProgress { request: r }]);
    n.handle_timeout(t + ms(10_000));
    assert_eq!(drain(&mut n), vec![Output::Interrupt { request: r }]);
    // A late answer to the poll is a stale report.
    assert_eq!(
        n.handle(
            t + ms(10_001),
            Input::PipeProgress {
                request: r,
                written: 10
            }
        ),
        Err(MirrorError::UnexpectedReport(r))
    );
    n.handle_timeout(t + ms(15_000));
    let out = drain(&mut n);
    assert_eq!(out[0], Output::Abort { request: r }, "{out:?}");
    assert!(matches!(out[1..], [Output::CancelLookup { .. }]), "{out:?}");
    assert_eq!(n.mirror().active_requests(), 0);
    assert_eq!(n.poll_timeout(), None);
}

#[test]
fn the_minimum_progress_is_a_budget() {
    let t0 = Instant::now();
    let mut cfg = NodeConfig::new(SELF);
    cfg.mirror.min_progress = 1000;
    let mut n = Node::new(cfg);
    let lookup = mirrored(&mut n, t0, 1, blob_request(None));
    let providers = vec![(1, vec![addr(1, 5000)]), (2, vec![addr(2, 5000)])];
    n.handle(t0, Input::Providers { lookup, providers })
        .unwrap();
    let f = fetches(&drain(&mut n))[0].0;
    n.handle(
        t0,
        Input::FetchResponded {
            fetch: f,
            response: ok_200(1_000_000),
        },
    )
    .unwrap();
    drain(&mut n);
    let r = RequestId(1);
    // Unsolicited progress is misuse.
    assert_eq!(
        n.handle(
            t0,
            Input::PipeProgress {
                request: r,
                written: 1
            }
        ),
        Err(MirrorError::UnexpectedReport(r))
    );
    n.handle_timeout(t0 + ms(5000));
    drain(&mut n);
    n.handle(
        t0 + ms(5000),
        Input::PipeProgress {
            request: r,
            written: 1000,
        },
    )
    .unwrap();
    assert!(drain(&mut n).is_empty(), "1000 bytes per period: moving");
    n.handle_timeout(t0 + ms(10_000));
    drain(&mut n);
    n.handle(
        t0 + ms(10_000),
        Input::PipeProgress {
            request: r,
            written: 1999,
        },
    )
    .unwrap();
    assert_eq!(drain(&mut n), vec![Output::Interrupt { request: r }]);
}

// ---- what a peer's answer must say (SPEC §8) ----

fn manifest_request(method: Method, reference: &str) -> ContentRequest {
    let path = format!("/v2/x/manifests/{reference}?ns=127.0.0.1%3A5000");
    request(method, &path, None, false)
}

fn manifest() -> Digest {
    Digest::sha256_of(b"manifest")
}

/// An answer with `digest`, `status`, `len` and `range`.
fn answer(
    digest: Option<&Digest>,
    status: u16,
    len: Option<u64>,
    range: Option<(u64, u64, u64)>,
) -> FetchResponse {
    FetchResponse {
        status,
        digest: digest.map(|d| d.to_string()),
        content_length: len,
        content_range: range.map(|(start, end, size)| ContentRange { start, end, size }),
    }
}

/// Request 1 (`req`) mirrored from `peers` (the lookup finished); its first fetch answers
/// `resp`. Returns the node, the peer that answered and what the node decided then.
fn first_answer(
    req: ContentRequest,
    peers: &[u8],
    resp: FetchResponse,
) -> (Node<u32>, u32, Vec<Output<u32>>) {
    let t0 = Instant::now();
    let mut n = node();
    let lookup = mirrored(&mut n, t0, 1, req);
    let providers = peers
        .iter()
        .map(|p| (u32::from(*p), vec![addr(*p, 5000)]))
        .collect();
    n.handle(t0, Input::Providers { lookup, providers })
        .unwrap();
    n.handle(t0, Input::LookupFinished { lookup }).unwrap();
    let f = fetches(&drain(&mut n));
    assert_eq!(f.len(), 1, "{f:?}");
    n.handle(t0, Input::FetchConnected { fetch: f[0].0 })
        .unwrap();
    n.handle(
        t0 + ms(1),
        Input::FetchResponded {
            fetch: f[0].0,
            response: resp,
        },
    )
    .unwrap();
    let out = drain(&mut n);
    (n, f[0].1, out)
}

/// `out` serves nothing and asks another peer than `rejected`; that one's `good` answer is
/// relayed.
fn the_next_peer_serves(mut n: Node<u32>, rejected: u32, out: &[Output<u32>], good: FetchResponse) {
    assert!(
        !out.iter().any(|o| matches!(o, Output::Serve { .. })),
        "{out:?}"
    );
    let next = fetches(out);
    assert_eq!(next.len(), 1, "the next peer is asked: {out:?}");
    assert_ne!(next[0].1, rejected);
    let t = Instant::now();
    n.handle(
        t,
        Input::FetchResponded {
            fetch: next[0].0,
            response: good,
        },
    )
    .unwrap();
    let out = drain(&mut n);
    assert!(
        matches!(out.as_slice(), [Output::Serve { request, fetch, .. }] if *request == RequestId(1) && *fetch == next[0].0),
        "{out:?}"
    );
}

/// `out` is the 404 of a request whose one attempt failed.
fn the_one_attempt_failed(out: &[Output<u32>], key: &Key, code: ErrorCode) {
    let fail = out.iter().find_map(|o| match o {
        Output::Fail { error, reason, .. } => Some((error.code, error.message.clone(), *reason)),
        _ => None,
    });
    assert_eq!(
        fail,
        Some((
            code,
            format!("all 1 attempts failed for {key}"),
            crate::FailReason::AllAttemptsFailed
        )),
        "{out:?}"
    );
    assert!(
        !out.iter().any(|o| matches!(o, Output::Serve { .. })),
        "{out:?}"
    );
}

#[test]
fn a_body_without_content_length_is_rejected() {
    let b = blob();
    // A whole blob, and a part.
    let cases = [
        (None, answer(Some(&b), 200, None, None), ok_200(4)),
        (
            Some("bytes=10-19"),
            answer(Some(&b), 206, None, Some((10, 19, 100))),
            answer(Some(&b), 206, Some(10), Some((10, 19, 100))),
        ),
    ];
    for (range, unbounded, good) in cases {
        let (n, peer, out) = first_answer(blob_request(range), &[1, 2], unbounded.clone());
        the_next_peer_serves(n, peer, &out, good);
        // Nobody else: the 404 of a lying peer.
        let req = blob_request(range);
        let key = req.key();
        let (_, _, out) = first_answer(req, &[1], unbounded);
        the_one_attempt_failed(&out, &key, ErrorCode::BlobUnknown);
    }
}

/// Every rejected answer is noted once, with its peer and reason (for the log and
/// `speil_peer_answers_rejected_total`); a peer that no longer holds the content is told apart.
#[test]
fn rejected_answers_are_noted_with_their_reason() {
    use crate::mirror::Rejection;
    let b = blob();
    let other = manifest();
    let cases = [
        (
            answer(Some(&b), 404, Some(0), None),
            Rejection::Status(404),
            true,
        ),
        (
            answer(Some(&b), 500, Some(0), None),
            Rejection::Status(500),
            false,
        ),
        (
            answer(Some(&other), 200, Some(4), None),
            Rejection::Digest,
            false,
        ),
        (answer(None, 200, Some(4), None), Rejection::Digest, false),
        (
            answer(Some(&b), 200, None, None),
            Rejection::NoLength,
            false,
        ),
    ];
    for (resp, why, gone) in cases {
        let (mut n, peer, _) = first_answer(blob_request(None), &[1, 2], resp);
        let note = n.poll_note();
        assert_eq!(
            note,
            Some(Note::PeerAnswerRejected {
                request: RequestId(1),
                peer,
                why,
            })
        );
        assert_eq!(why.is_gone(), gone, "{why}");
        assert_eq!(n.poll_note(), None, "one note per rejection");
    }
    // A good answer notes nothing.
    let (mut n, _, out) = first_answer(blob_request(None), &[1], ok_200(4));
    assert!(matches!(out.as_slice(), [Output::Serve { .. }]), "{out:?}");
    assert_eq!(n.poll_note(), None);
}

/// Notes nobody reads are bounded: the newest [`crate::mirror::MAX_NOTES`] are kept.
#[test]
fn unread_notes_are_bounded() {
    let max = crate::mirror::MAX_NOTES as u64;
    let t = Instant::now();
    let mut n = node();
    let total = max + 40;
    for id in 1..=total {
        // A blob of its own each, so that every request looks its providers up.
        let d = Digest::sha256_of(&id.to_be_bytes());
        let path = format!("/v2/x/blobs/{d}?ns=127.0.0.1%3A5000");
        let lookup = mirrored(&mut n, t, id, request(Method::GET, &path, None, false));
        n.handle(
            t,
            Input::Providers {
                lookup,
                providers: vec![(1, vec![addr(1, 5000)])],
            },
        )
        .unwrap();
        let f = fetches(&drain(&mut n));
        assert_eq!(f.len(), 1, "{f:?}");
        n.handle(t, Input::FetchConnected { fetch: f[0].0 })
            .unwrap();
        n.handle(
            t,
            Input::FetchResponded {
                fetch: f[0].0,
                response: answer(Some(&d), 404, Some(0), None),
            },
        )
        .unwrap();
        n.handle(t, Input::LookupFinished { lookup }).unwrap();
        drain(&mut n);
    }
    let notes: Vec<_> = std::iter::from_fn(|| n.poll_note()).collect();
    assert_eq!(notes.len() as u64, max);
    assert!(
        matches!(notes.first(), Some(Note::PeerAnswerRejected { request, .. }) if *request == RequestId(total - max + 1)),
        "{:?}",
        notes.first()
    );
}

#[test]
fn a_manifest_over_4_mib_from_a_peer_is_rejected() {
    let cap = crate::manifest::MAX_MANIFEST_SIZE as u64;
    let m = manifest();
    // By tag (no digest to check) and by digest.
    for (reference, digest) in [("v1".to_owned(), None), (m.to_string(), Some(&m))] {
        let req = || manifest_request(Method::GET, &reference);
        let large = answer(digest, 200, Some(cap + 1), None);
        let (n, peer, out) = first_answer(req(), &[1, 2], large.clone());
        // Exactly the cap is a manifest still.
        the_next_peer_serves(n, peer, &out, answer(digest, 200, Some(cap), None));
        let key = req().key();
        let (_, _, out) = first_answer(req(), &[1], large);
        the_one_attempt_failed(&out, &key, ErrorCode::ManifestUnknown);
    }
    // A HEAD describes such a manifest as a local one does: not at all.
    let head = || manifest_request(Method::HEAD, "v1");
    let (n, peer, out) = first_answer(head(), &[1, 2], answer(None, 200, Some(cap + 1), None));
    the_next_peer_serves(n, peer, &out, answer(None, 200, Some(100), None));
}

#[test]
fn a_part_whose_length_is_not_its_range_is_rejected() {
    let b = blob();
    let range = Some((10, 19, 100));
    for wrong in [9, 11, 100] {
        let (n, peer, out) = first_answer(
            blob_request(Some("bytes=10-19")),
            &[1, 2],
            answer(Some(&b), 206, Some(wrong), range),
        );
        the_next_peer_serves(n, peer, &out, answer(Some(&b), 206, Some(10), range));
    }
    let req = blob_request(Some("bytes=10-19"));
    let key = req.key();
    let (_, _, out) = first_answer(req, &[1], answer(Some(&b), 206, Some(11), range));
    the_one_attempt_failed(&out, &key, ErrorCode::BlobUnknown);
}

#[test]
fn a_continuation_must_claim_the_size_already_known() {
    let b = blob();
    let rest = FetchRange::FromTo {
        start: 400,
        end: 999,
    };
    // The right bytes of another blob's size; a length that is not the range.
    let lies = [
        answer(Some(&b), 206, Some(600), Some((400, 999, 2000))),
        answer(Some(&b), 206, Some(1000), Some((400, 999, 1000))),
    ];
    for lie in lies {
        // A 1000-byte blob from one of three peers breaks after 400 bytes.
        let (mut n, _, t) = serving(None, ok_200(1000));
        let r = RequestId(1);
        let f = interrupted(&mut n, t, 400);
        assert_eq!(f[0].5, rest);
        n.handle(
            t,
            Input::FetchResponded {
                fetch: f[0].0,
                response: lie,
            },
        )
        .unwrap();
        let out = drain(&mut n);
        assert!(
            !out.iter().any(|o| matches!(o, Output::Continue { .. })),
            "{out:?}"
        );
        let g = fetches(&out);
        assert_eq!(g.len(), 1, "the last peer continues: {out:?}");
        assert_ne!(g[0].1, f[0].1);
        assert_eq!(g[0].5, rest);
        n.handle(
            t,
            Input::FetchResponded {
                fetch: g[0].0,
                response: answer(Some(&b), 206, Some(600), Some((400, 999, 1000))),
            },
        )
        .unwrap();
        assert_eq!(
            drain(&mut n),
            vec![Output::Continue {
                request: r,
                fetch: g[0].0
            }]
        );
    }
}

#[test]
fn head_answers_keep_their_headers() {
    let b = blob();
    let head_blob = || {
        let path = format!("/v2/x/blobs/{b}?ns=127.0.0.1%3A5000");
        request(Method::HEAD, &path, None, false)
    };
    // With or without a length (nothing is relayed but headers), and a manifest's size.
    let cases = [
        (head_blob(), answer(Some(&b), 200, None, None)),
        (head_blob(), answer(Some(&b), 200, Some(1 << 40), None)),
        (
            manifest_request(Method::HEAD, "v1"),
            answer(None, 200, Some(1000), None),
        ),
    ];
    for (req, resp) in cases {
        let (_, _, out) = first_answer(req, &[1, 2], resp);
        assert!(
            matches!(out.as_slice(), [Output::Serve { request, .. }] if *request == RequestId(1)),
            "{out:?}"
        );
    }
}

// ---- relayed bodies are checked against their digest (SPEC §8) ----

/// The `verify` of the node's [`Output::Serve`] in `out`.
fn verify_of(out: &[Output<u32>]) -> Option<Digest> {
    out.iter()
        .find_map(|o| match o {
            Output::Serve { verify, .. } => Some(verify.clone()),
            _ => None,
        })
        .expect("a Serve")
}

/// A node relaying a blob of 1000 bytes for request `id`, from the first of `peers`: the
/// node, the peer asked and the Serve's `verify`.
fn relaying(n: &mut Node<u32>, t: Instant, id: u64, peers: &[u32]) -> (u32, Option<Digest>) {
    let lookup = mirrored(n, t, id, blob_request(None));
    let providers = peers
        .iter()
        .map(|p| (*p, vec![addr(*p as u8, 5000)]))
        .collect();
    n.handle(t, Input::Providers { lookup, providers }).unwrap();
    n.handle(t, Input::LookupFinished { lookup }).unwrap();
    let f = fetches(&drain(n));
    assert_eq!(f.len(), 1, "{f:?}");
    n.handle(
        t,
        Input::FetchResponded {
            fetch: f[0].0,
            response: ok_200(1000),
        },
    )
    .unwrap();
    (f[0].1, verify_of(&drain(n)))
}

fn part_206(start: u64, end: u64, size: u64) -> FetchResponse {
    FetchResponse {
        status: 206,
        digest: Some(blob().to_string()),
        content_length: Some(end - start + 1),
        content_range: Some(ContentRange { start, end, size }),
    }
}

#[test]
fn a_body_is_verified_when_the_whole_content_passes() {
    // A whole blob, and a range that covers it: hashed against the digest asked for.
    let (_, _, _) = serving(None, ok_200(1000));
    let t = Instant::now();
    let mut n = node();
    assert_eq!(relaying(&mut n, t, 1, &[1]).1, Some(blob()));
    for (range, resp, want) in [
        (Some("bytes=0-"), part_206(0, 999, 1000), Some(blob())),
        (Some("bytes=0-999"), part_206(0, 999, 1000), Some(blob())),
        // A part of the blob cannot be checked against the digest of the whole.
        (Some("bytes=10-"), part_206(10, 999, 1000), None),
        (Some("bytes=0-10"), part_206(0, 10, 1000), None),
    ] {
        let mut n = node();
        let lookup = mirrored(&mut n, t, 1, blob_request(range));
        let providers = vec![(1, vec![addr(1, 5000)])];
        n.handle(t, Input::Providers { lookup, providers }).unwrap();
        let f = fetches(&drain(&mut n))[0].0;
        n.handle(
            t,
            Input::FetchResponded {
                fetch: f,
                response: resp,
            },
        )
        .unwrap();
        assert_eq!(verify_of(&drain(&mut n)), want, "{range:?}");
    }
    // A tag names no digest: nothing to check the body against.
    let mut n = node();
    let tag = request(
        Method::GET,
        "/v2/x/manifests/v1?ns=127.0.0.1%3A5000",
        None,
        false,
    );
    let lookup = mirrored(&mut n, t, 1, tag);
    let providers = vec![(1, vec![addr(1, 5000)])];
    n.handle(t, Input::Providers { lookup, providers }).unwrap();
    let f = fetches(&drain(&mut n))[0].0;
    let manifest = FetchResponse {
        status: 200,
        digest: Some(blob().to_string()),
        content_length: Some(100),
        content_range: None,
    };
    n.handle(
        t,
        Input::FetchResponded {
            fetch: f,
            response: manifest,
        },
    )
    .unwrap();
    assert_eq!(verify_of(&drain(&mut n)), None);
}

#[test]
fn a_body_that_does_not_match_its_digest_makes_every_peer_that_fed_it_distrusted() {
    let t = Instant::now();
    let mut n = node();
    let r = RequestId(1);
    let (first, verify) = relaying(&mut n, t, 1, &[1, 2, 3]);
    assert_eq!(verify, Some(blob()));
    // The body broke at 400 and a second peer continued it.
    let f = interrupted(&mut n, t, 400);
    let second = f[0].1;
    assert_ne!(second, first);
    n.handle(
        t,
        Input::FetchResponded {
            fetch: f[0].0,
            response: part_206(400, 999, 1000),
        },
    )
    .unwrap();
    assert!(matches!(
        drain(&mut n).as_slice(),
        [Output::Continue { .. }]
    ));
    // The whole body did not hash to the digest: the pipe aborted the client's connection.
    n.handle(t, Input::PipeMismatch { request: r }).unwrap();
    assert_eq!(n.mirror().active_requests(), 0);
    assert_eq!(n.mirror().mismatches(), 1);
    let key = blob_request(None).key();
    assert!(n.mirror().distrusts(t, &key, &first));
    assert!(n.mirror().distrusts(t, &key, &second));
    // A late report about the ended request is misuse.
    assert_eq!(
        n.handle(t, Input::PipeMismatch { request: r }),
        Err(MirrorError::UnknownRequest(r))
    );

    // The next request for that blob (after the lookup cache expired) asks only the third
    // peer.
    let t2 = t + ms(6_000);
    let (asked, _) = relaying(&mut n, t2, 2, &[1, 2, 3]);
    let third = [1, 2, 3]
        .into_iter()
        .find(|p| *p != first && *p != second)
        .unwrap();
    assert_eq!(asked, third);
    n.handle(
        t2,
        Input::PipeMismatch {
            request: RequestId(2),
        },
    )
    .unwrap();
    // Nobody is left for that blob: a 404 at once, and containerd goes upstream.
    let t3 = t2 + ms(6_000);
    let lookup = mirrored(&mut n, t3, 3, blob_request(None));
    let providers = vec![
        (1, vec![addr(1, 5000)]),
        (2, vec![addr(2, 5000)]),
        (3, vec![addr(3, 5000)]),
    ];
    n.handle(t3, Input::Providers { lookup, providers })
        .unwrap();
    n.handle(t3, Input::LookupFinished { lookup }).unwrap();
    let out = drain(&mut n);
    assert!(fetches(&out).is_empty(), "{out:?}");
    assert!(
        matches!(out.as_slice(), [Output::Fail { error, .. }] if error.message.contains("could not find peer")),
        "{out:?}"
    );

    // The memory is bounded in time: after `distrust_for` the peers are asked again.
    let later = t + n.mirror().config().distrust_for + ms(1);
    assert!(!n.mirror().distrusts(later, &key, &first));
    let (asked, _) = relaying(&mut n, later, 4, &[first]);
    assert_eq!(asked, first);
}

#[test]
fn the_distrust_memory_is_bounded_in_size() {
    let t = Instant::now();
    let mut cfg = NodeConfig::new(SELF);
    cfg.mirror.max_distrusted = 1;
    let mut n = Node::new(cfg);
    let (peer, _) = relaying(&mut n, t, 1, &[1]);
    n.handle(
        t,
        Input::PipeMismatch {
            request: RequestId(1),
        },
    )
    .unwrap();
    let key = blob_request(None).key();
    assert!(n.mirror().distrusts(t, &key, &peer));
    // Another blob's mismatch takes the one place: the first pair is forgotten.
    let other = Digest::sha256_of(b"other layer");
    let path = format!("/v2/x/blobs/{other}?ns=127.0.0.1%3A5000");
    let lookup = mirrored(&mut n, t, 2, request(Method::GET, &path, None, false));
    n.handle(
        t,
        Input::Providers {
            lookup,
            providers: vec![(2, vec![addr(2, 5000)])],
        },
    )
    .unwrap();
    let f = fetches(&drain(&mut n))[0].0;
    let resp = FetchResponse {
        digest: Some(other.to_string()),
        ..ok_200(10)
    };
    n.handle(
        t,
        Input::FetchResponded {
            fetch: f,
            response: resp,
        },
    )
    .unwrap();
    drain(&mut n);
    n.handle(
        t + ms(1),
        Input::PipeMismatch {
            request: RequestId(2),
        },
    )
    .unwrap();
    assert!(!n.mirror().distrusts(t + ms(1), &key, &peer));
    let other_key = request(Method::GET, &path, None, false).key();
    assert!(n.mirror().distrusts(t + ms(1), &other_key, &2));
}

#[test]
fn a_drip_is_not_progress_by_default() {
    // One byte per period keeps a body moving only when the minimum allows it: the default
    // asks for 64 KiB per stall timeout.
    let (mut n, _, t) = serving(None, ok_200(1_000_000));
    let r = RequestId(1);
    n.handle_timeout(t + ms(5000));
    assert_eq!(drain(&mut n), vec![Output::PollProgress { request: r }]);
    n.handle(
        t + ms(5000),
        Input::PipeProgress {
            request: r,
            written: 1,
        },
    )
    .unwrap();
    assert_eq!(drain(&mut n), vec![Output::Interrupt { request: r }]);
}

/// The `hold` of the node's [`Output::Serve`] in `out`.
fn hold_of(out: &[Output<u32>]) -> bool {
    out.iter()
        .find_map(|o| match o {
            Output::Serve { hold, .. } => Some(*hold),
            _ => None,
        })
        .expect("a Serve")
}

/// Request `id` for a blob of `size` bytes, answered by peer 1: the Serve's `hold`.
fn served_hold(n: &mut Node<u32>, t: Instant, id: u64, size: u64) -> bool {
    let d = Digest::sha256_of(format!("blob {id}").as_bytes());
    let path = format!("/v2/x/blobs/{d}?ns=127.0.0.1%3A5000");
    let lookup = mirrored(n, t, id, request(Method::GET, &path, None, false));
    let providers = vec![(1, vec![addr(1, 5000)])];
    n.handle(t, Input::Providers { lookup, providers }).unwrap();
    let f = fetches(&drain(n))[0].0;
    let response = FetchResponse {
        digest: Some(d.to_string()),
        ..ok_200(size)
    };
    n.handle(t, Input::FetchResponded { fetch: f, response })
        .unwrap();
    hold_of(&drain(n))
}

#[test]
fn small_checked_bodies_are_held_within_a_budget() {
    let t = Instant::now();
    let mut cfg = NodeConfig::new(SELF);
    cfg.mirror.hold_max = 1000;
    cfg.mirror.hold_budget = 1500;
    let mut n = Node::new(cfg);
    // Small enough and within the budget: held until it matched.
    assert!(served_hold(&mut n, t, 1, 1000));
    assert_eq!(n.mirror().held_bytes(), 1000);
    // Larger than a held body may be: streams.
    assert!(!served_hold(&mut n, t, 2, 1001));
    // Small, but the budget is taken: streams.
    assert!(!served_hold(&mut n, t, 3, 600));
    assert!(served_hold(&mut n, t, 4, 500));
    assert_eq!(n.mirror().held_bytes(), 1500);
    // A held body that ends (complete, mismatched or its client gone) gives its bytes back.
    n.handle(
        t,
        Input::PipeFinished {
            request: RequestId(1),
        },
    )
    .unwrap();
    n.handle(
        t,
        Input::PipeMismatch {
            request: RequestId(4),
        },
    )
    .unwrap();
    drain(&mut n);
    assert_eq!(n.mirror().held_bytes(), 0);
    assert!(served_hold(&mut n, t, 5, 1000));
    n.handle(
        t,
        Input::RequestClosed {
            request: RequestId(5),
        },
    )
    .unwrap();
    assert_eq!(n.mirror().held_bytes(), 0);
    // A body that is not checked (a part of the blob) is never held.
    let mut n = node();
    let lookup = mirrored(&mut n, t, 1, blob_request(Some("bytes=10-")));
    n.handle(
        t,
        Input::Providers {
            lookup,
            providers: vec![(1, vec![addr(1, 5000)])],
        },
    )
    .unwrap();
    let f = fetches(&drain(&mut n))[0].0;
    n.handle(
        t,
        Input::FetchResponded {
            fetch: f,
            response: part_206(10, 999, 1000),
        },
    )
    .unwrap();
    assert!(!hold_of(&drain(&mut n)));
}

// ---- bounds on mirrored requests and lookups ----

/// Request `id` for the blob named by `n`, not held locally: what the node answered.
fn ask(node: &mut Node<u32>, t: Instant, id: u64, n: u32) -> Vec<Output<u32>> {
    let d = Digest::sha256_of(format!("blob {n}").as_bytes());
    let path = format!("/v2/x/blobs/{d}?ns=127.0.0.1%3A5000");
    let rid = RequestId(id);
    let request = request(Method::GET, &path, None, false);
    node.handle(t, Input::Request { id: rid, request }).unwrap();
    drain(node);
    node.handle(
        t,
        Input::LocalAnswered {
            request: rid,
            local: Local::Absent,
        },
    )
    .unwrap();
    drain(node)
}

fn busy(out: &[Output<u32>]) -> bool {
    matches!(out, [Output::Fail { error, reason: crate::FailReason::Busy, .. }]
        if error.status == http::StatusCode::NOT_FOUND)
}

#[test]
fn lookups_and_mirrored_requests_are_bounded() {
    let t = Instant::now();
    let mut cfg = NodeConfig::new(SELF);
    cfg.mirror.max_lookups = 2;
    cfg.mirror.max_requests = 3;
    let mut n = Node::new(cfg);
    assert!(matches!(
        ask(&mut n, t, 1, 1).as_slice(),
        [Output::Lookup { .. }]
    ));
    assert!(matches!(
        ask(&mut n, t, 2, 2).as_slice(),
        [Output::Lookup { .. }]
    ));
    // A third key would need a third lookup: 404 at once (containerd goes upstream).
    let out = ask(&mut n, t, 3, 3);
    assert!(busy(&out), "{out:?}");
    assert!(!n.is_active(RequestId(3)));
    // A request for a key being looked up shares that lookup.
    let out = ask(&mut n, t, 4, 1);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(n.mirror().active_requests(), 3);
    // Three requests are mirrored: a fourth, even for a key being looked up, is refused.
    let out = ask(&mut n, t, 5, 2);
    assert!(busy(&out), "{out:?}");
    // When one ends, there is room again.
    n.handle(
        t,
        Input::RequestClosed {
            request: RequestId(2),
        },
    )
    .unwrap();
    drain(&mut n);
    assert!(matches!(
        ask(&mut n, t, 6, 3).as_slice(),
        [Output::Lookup { .. }]
    ));
}
