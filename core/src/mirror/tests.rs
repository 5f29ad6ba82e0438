//! The mirror's tests on simulated time.

// A test picks any origin for its simulated time.
#![allow(clippy::disallowed_methods)]

use super::*;
use std::net::SocketAddr;

use crate::digest::Digest;
use crate::range::ByteRange;
use crate::request::Target;

const SELF: u32 = 0;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn drain(m: &mut Mirror<u32>) -> Vec<Output<u32>> {
    let mut q = VecDeque::new();
    m.take_outputs(&mut q);
    q.into()
}

/// Peer `n`'s registry is at 192.0.2.n:5000 (TEST-NET-1, never dialled).
fn addr(n: u32) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, n as u8], 5000))
}

fn peers(ps: &[u32]) -> Vec<(u32, Vec<SocketAddr>)> {
    ps.iter().map(|p| (*p, vec![addr(*p)])).collect()
}

fn blob_req(key: &str) -> MirrorRequest {
    let digest = Digest::sha256_of(key.as_bytes());
    MirrorRequest {
        key: Key::digest(&digest),
        target: Target::Blob(digest.clone()),
        path: format!("/v2/x/blobs/{digest}"),
        digest: Some(digest),
        manifest: false,
        head: false,
        range: None,
    }
}

fn ok_200(req: &MirrorRequest, len: u64) -> FetchResponse {
    FetchResponse {
        status: 200,
        digest: req.digest.as_ref().map(|d| d.to_string()),
        content_length: Some(len),
        content_range: None,
    }
}

fn lookup_id(outs: &[Output<u32>]) -> LookupId {
    outs.iter()
        .find_map(|o| match o {
            Output::Lookup { id, .. } => Some(*id),
            _ => None,
        })
        .expect("a lookup")
}

type Started = (FetchId, u32, FetchRange);

fn fetches(outs: &[Output<u32>]) -> Vec<Started> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Fetch {
                id, peer, range, ..
            } => Some((*id, *peer, *range)),
            _ => None,
        })
        .collect()
}

#[test]
fn serves_from_a_peer_and_never_from_itself() {
    let t0 = Instant::now();
    let mut m = Mirror::new(MirrorConfig::default(), SELF, 1);
    let req = blob_req("a");
    m.handle_request(t0, RequestId(1), req.clone()).unwrap();
    let outs = drain(&mut m);
    let lid = lookup_id(&outs);
    assert!(matches!(outs[0], Output::Lookup { count: 3, .. }));
    m.handle_providers(t0, lid, peers(&[SELF, 7])).unwrap();
    let outs = drain(&mut m);
    let f = fetches(&outs);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].1, 7, "never self");
    m.handle_fetch_connected(t0 + ms(1), f[0].0).unwrap();
    m.handle_fetch_responded(t0 + ms(3), f[0].0, ok_200(&req, 10))
        .unwrap();
    assert_eq!(
        drain(&mut m),
        vec![Output::Serve {
            request: RequestId(1),
            fetch: f[0].0,
            verify: req.digest.clone(),
            hold: true,
        }]
    );
    m.handle_pipe_finished(t0 + ms(5), RequestId(1)).unwrap();
    assert_eq!(m.active_requests(), 0);
    assert_eq!(m.active_fetches(), 0);
    assert_eq!(m.ttfb_percentile(90), ms(2));
}

#[test]
fn only_self_is_not_found() {
    let t0 = Instant::now();
    let mut m = Mirror::new(MirrorConfig::default(), SELF, 1);
    let req = blob_req("a");
    m.handle_request(t0, RequestId(1), req.clone()).unwrap();
    let lid = lookup_id(&drain(&mut m));
    m.handle_providers(t0, lid, peers(&[SELF])).unwrap();
    m.handle_lookup_finished(t0 + ms(2), lid).unwrap();
    let outs = drain(&mut m);
    assert_eq!(
        outs,
        vec![Output::Fail {
            request: RequestId(1),
            error: crate::OciError::blob_unknown(
                req.digest.as_ref().unwrap(),
                format!("could not find peer for {}", req.key)
            ),
            reason: crate::FailReason::NoPeer,
        }]
    );
}

#[test]
fn resolve_timeout_without_peers() {
    let t0 = Instant::now();
    let mut m = Mirror::new(MirrorConfig::default(), SELF, 1);
    m.handle_request(t0, RequestId(1), blob_req("a")).unwrap();
    let lid = lookup_id(&drain(&mut m));
    let (at, why) = m.poll_timeout().unwrap();
    assert_eq!((at, why), (t0 + ms(20), TimeoutReason::Resolve));
    m.handle_timeout(t0 + ms(19));
    assert!(drain(&mut m).is_empty(), "early timeouts are harmless");
    m.handle_timeout(t0 + ms(20));
    let outs = drain(&mut m);
    assert!(matches!(outs[0], Output::Fail { .. }));
    assert_eq!(outs[1], Output::CancelLookup { id: lid });
    assert!(m.poll_timeout().is_none());
}

#[test]
fn lookups_are_shared_and_cached() {
    let t0 = Instant::now();
    let mut m = Mirror::new(MirrorConfig::default(), SELF, 1);
    let req = blob_req("a");
    m.handle_request(t0, RequestId(1), req.clone()).unwrap();
    m.handle_request(t0, RequestId(2), req.clone()).unwrap();
    let outs = drain(&mut m);
    let lookups = outs
        .iter()
        .filter(|o| matches!(o, Output::Lookup { .. }))
        .count();
    assert_eq!(lookups, 1);
    let lid = lookup_id(&outs);
    m.handle_providers(t0 + ms(1), lid, peers(&[5])).unwrap();
    m.handle_lookup_finished(t0 + ms(2), lid).unwrap();
    let f = fetches(&drain(&mut m));
    assert_eq!(f.len(), 2, "both requests fetch");
    for (id, _, _) in &f {
        m.handle_fetch_failed(t0 + ms(3), *id, FetchFailure::Connect("refused".into()))
            .unwrap();
    }
    let outs = drain(&mut m);
    assert!(outs.iter().all(
        |o| matches!(o, Output::Fail { error, .. } if error.message.starts_with("all 1 attempts failed"))
    ));
    // Within 5 s the providers are reused without a lookup.
    m.handle_request(t0 + ms(4000), RequestId(3), req.clone())
        .unwrap();
    let outs = drain(&mut m);
    assert!(outs.iter().all(|o| !matches!(o, Output::Lookup { .. })));
    assert_eq!(fetches(&outs).len(), 1);
    m.handle_request_closed(t0 + ms(4001), RequestId(3))
        .unwrap();
    drain(&mut m);
    // After 5 s, a new lookup.
    m.handle_request(t0 + ms(5003), RequestId(4), req).unwrap();
    let outs = drain(&mut m);
    assert!(outs.iter().any(|o| matches!(o, Output::Lookup { .. })));
}

#[test]
fn hedges_at_the_observed_percentiles() {
    let t0 = Instant::now();
    let mut m = Mirror::new(MirrorConfig::default(), SELF, 3);
    // Observe 100 fetches with ttfb 1..=100 ms.
    for i in 1..=100u64 {
        let req = blob_req(&format!("warm{i}"));
        let rid = RequestId(1000 + i);
        let t = t0 + ms(i * 1000);
        m.handle_request(t, rid, req.clone()).unwrap();
        let lid = lookup_id(&drain(&mut m));
        m.handle_providers(t, lid, peers(&[1])).unwrap();
        let f = fetches(&drain(&mut m))[0].0;
        m.handle_fetch_connected(t, f).unwrap();
        m.handle_fetch_responded(t + ms(i), f, ok_200(&req, 1))
            .unwrap();
        m.handle_pipe_finished(t + ms(i), rid).unwrap();
        drain(&mut m);
    }
    assert_eq!(m.ttfb_percentile(80), ms(80));
    assert_eq!(m.ttfb_percentile(90), ms(90));
    assert_eq!(m.header_budget(), ms(180));
    let t1 = t0 + ms(500_000);
    let req = blob_req("hedged");
    m.handle_request(t1, RequestId(1), req.clone()).unwrap();
    let lid = lookup_id(&drain(&mut m));
    m.handle_providers(t1, lid, peers(&[1, 2, 3, 4, 5]))
        .unwrap();
    let first = fetches(&drain(&mut m));
    assert_eq!(first.len(), 1);
    m.handle_fetch_connected(t1 + ms(1), first[0].0).unwrap();
    let mut starts = vec![];
    let mut now = t1;
    while let Some((at, why)) = m.poll_timeout() {
        if at > t1 + ms(100) {
            break;
        }
        assert_eq!(why, TimeoutReason::Hedge);
        now = at;
        m.handle_timeout(now);
        for f in fetches(&drain(&mut m)) {
            starts.push(((now - t1).as_millis(), f.1));
            m.handle_fetch_connected(now, f.0).unwrap();
        }
    }
    assert_eq!(
        starts.iter().map(|s| s.0).collect::<Vec<_>>(),
        vec![80, 85, 90]
    );
    let peers: BTreeSet<u32> = starts.iter().map(|s| s.1).chain([first[0].1]).collect();
    assert_eq!(peers.len(), 4, "each hedge goes to another peer");
    // The second hedge answers first: it wins, the others are cancelled.
    let winner = FetchId(first[0].0.0 + 2);
    m.handle_fetch_responded(now + ms(1), winner, ok_200(&req, 5))
        .unwrap();
    let outs = drain(&mut m);
    assert_eq!(
        outs.iter()
            .filter(|o| matches!(o, Output::CancelFetch { .. }))
            .count(),
        3
    );
    assert!(outs.contains(&Output::Serve {
        request: RequestId(1),
        fetch: winner,
        verify: req.digest.clone(),
        hold: true,
    }));
    assert_eq!(m.active_fetches(), 1);
}

#[test]
fn default_hedge_is_50ms_and_dial_budget_skips_dead_peers() {
    let t0 = Instant::now();
    let mut m = Mirror::new(MirrorConfig::default(), SELF, 3);
    m.handle_request(t0, RequestId(1), blob_req("x")).unwrap();
    let lid = lookup_id(&drain(&mut m));
    m.handle_providers(t0, lid, peers(&[1, 2])).unwrap();
    let first = fetches(&drain(&mut m));
    assert_eq!(m.poll_timeout(), Some((t0 + ms(50), TimeoutReason::Hedge)));
    m.handle_timeout(t0 + ms(50));
    let second = fetches(&drain(&mut m));
    assert_eq!(second.len(), 1);
    assert_ne!(first[0].1, second[0].1);
    // Neither connects: both are dropped at their dial deadline and the request ends 404
    // once the lookup is over.
    m.handle_lookup_finished(t0 + ms(60), lid).unwrap();
    assert_eq!(m.poll_timeout(), Some((t0 + ms(200), TimeoutReason::Dial)));
    m.handle_timeout(t0 + ms(200));
    let outs = drain(&mut m);
    assert!(outs.contains(&Output::CancelFetch { id: first[0].0 }));
    m.handle_timeout(t0 + ms(250));
    let outs = drain(&mut m);
    assert!(outs.contains(&Output::CancelFetch { id: second[0].0 }));
    assert!(outs.iter().any(
        |o| matches!(o, Output::Fail { error, .. } if error.message.starts_with("all 2 attempts failed"))
    ));
}

#[test]
fn header_budget_and_manifest_budget() {
    let t0 = Instant::now();
    let mut m = Mirror::new(MirrorConfig::default(), SELF, 3);
    let req = MirrorRequest {
        key: Key::tag("127.0.0.1:5000", "test/small", "v1"),
        target: Target::ManifestTag("v1".into()),
        path: "/v2/test/small/manifests/v1?ns=127.0.0.1%3A5000".into(),
        digest: None,
        manifest: true,
        head: true,
        range: None,
    };
    m.handle_request(t0, RequestId(1), req).unwrap();
    let lid = lookup_id(&drain(&mut m));
    m.handle_providers(t0, lid, peers(&[1])).unwrap();
    let f = fetches(&drain(&mut m))[0].0;
    m.handle_fetch_connected(t0 + ms(5), f).unwrap();
    assert_eq!(
        m.poll_timeout(),
        Some((t0 + ms(105), TimeoutReason::Headers))
    );
    m.handle_timeout(t0 + ms(105));
    assert!(drain(&mut m).contains(&Output::CancelFetch { id: f }));
    // The lookup never finishes and no peer comes: the resolve budget ends it.
    m.handle_timeout(t0 + ms(125));
    let outs = drain(&mut m);
    assert!(matches!(outs[0], Output::Fail { .. }), "{outs:?}");

    // A slow trickle of peers that accept but never answer: the 3 s budget ends it.
    let req = MirrorRequest {
        key: Key::tag("127.0.0.1:5000", "test/small", "v2"),
        target: Target::ManifestTag("v2".into()),
        path: "/v2/test/small/manifests/v2?ns=127.0.0.1%3A5000".into(),
        digest: None,
        manifest: true,
        head: false,
        range: None,
    };
    let t1 = t0 + ms(10_000);
    m.handle_request(t1, RequestId(2), req).unwrap();
    let lid = lookup_id(&drain(&mut m));
    let mut now = t1;
    let mut peer = 100;
    let mut ended = None;
    for _ in 0..1000 {
        peer += 1;
        m.handle_providers(now, lid, peers(&[peer])).unwrap();
        for f in fetches(&drain(&mut m)) {
            m.handle_fetch_connected(now, f.0).unwrap();
        }
        now += ms(10);
        m.handle_timeout(now);
        if drain(&mut m)
            .iter()
            .any(|o| matches!(o, Output::Fail { .. }))
        {
            ended = Some(now - t1);
            break;
        }
    }
    assert_eq!(ended, Some(ms(3000)));
}

#[test]
fn rejects_a_peer_with_another_digest() {
    let t0 = Instant::now();
    let mut m = Mirror::new(MirrorConfig::default(), SELF, 9);
    let req = blob_req("d");
    m.handle_request(t0, RequestId(1), req.clone()).unwrap();
    let lid = lookup_id(&drain(&mut m));
    m.handle_providers(t0, lid, peers(&[1, 2])).unwrap();
    let f = fetches(&drain(&mut m));
    let mut lie = ok_200(&req, 4);
    lie.digest = Some(Digest::sha256_of(b"other").to_string());
    m.handle_fetch_connected(t0, f[0].0).unwrap();
    m.handle_fetch_responded(t0 + ms(1), f[0].0, lie).unwrap();
    let outs = drain(&mut m);
    let next = fetches(&outs);
    assert_eq!(next.len(), 1, "the next peer is tried: {outs:?}");
    assert_ne!(next[0].1, f[0].1);
    assert!(!outs.iter().any(|o| matches!(o, Output::Serve { .. })));
}

#[test]
fn peer_answers_must_match_what_was_asked() {
    let t0 = Instant::now();
    let mut m = Mirror::new(MirrorConfig::default(), SELF, 9);
    let mut req = blob_req("strict");
    req.range = Some(ByteRange::FromTo { start: 10, end: 19 });
    m.handle_request(t0, RequestId(1), req.clone()).unwrap();
    let lid = lookup_id(&drain(&mut m));
    m.handle_providers(t0, lid, peers(&[1, 2, 3, 4])).unwrap();
    m.handle_lookup_finished(t0, lid).unwrap();
    let digest = req.digest.as_ref().map(|d| d.to_string());
    let part = |start, end| FetchResponse {
        status: 206,
        digest: digest.clone(),
        content_length: Some(end - start + 1),
        content_range: Some(ContentRange {
            start,
            end,
            size: 100,
        }),
    };
    // No Docker-Content-Digest for a digest request: not trusted.
    let f = fetches(&drain(&mut m))[0].0;
    let mut anonymous = part(10, 19);
    anonymous.digest = None;
    m.handle_fetch_responded(t0, f, anonymous).unwrap();
    let out = drain(&mut m);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Serve { .. })),
        "{out:?}"
    );
    // Another part than the one asked for: not relayed.
    let f = fetches(&out)[0].0;
    m.handle_fetch_responded(t0, f, part(0, 9)).unwrap();
    let out = drain(&mut m);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Serve { .. })),
        "{out:?}"
    );
    // The right part is.
    let f = fetches(&out)[0].0;
    m.handle_fetch_responded(t0, f, part(10, 19)).unwrap();
    assert_eq!(
        drain(&mut m),
        vec![Output::Serve {
            request: RequestId(1),
            fetch: f,
            verify: None,
            hold: false,
        }]
    );
}

#[test]
fn an_unsatisfiable_range_is_relayed_not_retried() {
    let t0 = Instant::now();
    let mut m = Mirror::new(MirrorConfig::default(), SELF, 9);
    let mut req = blob_req("short");
    req.range = Some(ByteRange::From { start: 1000 });
    m.handle_request(t0, RequestId(1), req).unwrap();
    let lid = lookup_id(&drain(&mut m));
    m.handle_providers(t0, lid, peers(&[1, 2])).unwrap();
    let f = fetches(&drain(&mut m))[0].0;
    let too_far = FetchResponse {
        status: 416,
        digest: None,
        content_length: Some(0),
        content_range: None,
    };
    m.handle_fetch_responded(t0, f, too_far).unwrap();
    assert_eq!(
        drain(&mut m),
        vec![Output::Serve {
            request: RequestId(1),
            fetch: f,
            verify: None,
            hold: false,
        }]
    );
}

#[test]
fn resumes_a_broken_body_from_another_peer() {
    let t0 = Instant::now();
    let mut m = Mirror::new(MirrorConfig::default(), SELF, 9);
    let req = blob_req("big");
    m.handle_request(t0, RequestId(1), req.clone()).unwrap();
    let lid = lookup_id(&drain(&mut m));
    m.handle_providers(t0, lid, peers(&[1, 2, 3])).unwrap();
    m.handle_lookup_finished(t0, lid).unwrap();
    let f = fetches(&drain(&mut m))[0];
    m.handle_fetch_connected(t0, f.0).unwrap();
    m.handle_fetch_responded(t0 + ms(1), f.0, ok_200(&req, 1000))
        .unwrap();
    drain(&mut m);
    m.handle_pipe_interrupted(t0 + ms(10), RequestId(1), 400)
        .unwrap();
    let r = fetches(&drain(&mut m));
    assert_eq!(r.len(), 1);
    assert_ne!(r[0].1, f.1);
    assert_eq!(
        r[0].2,
        FetchRange::FromTo {
            start: 400,
            end: 999
        }
    );
    // A peer that answers with the wrong range is not used.
    m.handle_fetch_connected(t0 + ms(11), r[0].0).unwrap();
    let wrong = FetchResponse {
        status: 206,
        digest: None,
        content_length: Some(1000),
        content_range: Some(ContentRange {
            start: 0,
            end: 999,
            size: 1000,
        }),
    };
    m.handle_fetch_responded(t0 + ms(12), r[0].0, wrong)
        .unwrap();
    let r2 = fetches(&drain(&mut m));
    assert_eq!(r2.len(), 1);
    assert_eq!(
        r2[0].2,
        FetchRange::FromTo {
            start: 400,
            end: 999
        }
    );
    m.handle_fetch_connected(t0 + ms(13), r2[0].0).unwrap();
    let right = FetchResponse {
        status: 206,
        digest: req.digest.as_ref().map(|d| d.to_string()),
        content_length: Some(600),
        content_range: Some(ContentRange {
            start: 400,
            end: 999,
            size: 1000,
        }),
    };
    m.handle_fetch_responded(t0 + ms(14), r2[0].0, right)
        .unwrap();
    assert_eq!(
        drain(&mut m),
        vec![Output::Continue {
            request: RequestId(1),
            fetch: r2[0].0
        }]
    );
    // It breaks again with no peer left: the connection is aborted, never a short 200.
    m.handle_pipe_interrupted(t0 + ms(20), RequestId(1), 700)
        .unwrap();
    let outs = drain(&mut m);
    assert_eq!(
        outs,
        vec![Output::Abort {
            request: RequestId(1)
        }]
    );
    assert_eq!(m.active_requests(), 0);
    assert_eq!(m.active_fetches(), 0);
}

#[test]
fn resume_of_a_client_range_keeps_its_end() {
    let t0 = Instant::now();
    let mut m = Mirror::new(MirrorConfig::default(), SELF, 9);
    let mut req = blob_req("ranged");
    req.range = Some(ByteRange::FromTo {
        start: 100,
        end: 199,
    });
    m.handle_request(t0, RequestId(1), req.clone()).unwrap();
    let lid = lookup_id(&drain(&mut m));
    m.handle_providers(t0, lid, peers(&[1, 2])).unwrap();
    let f = fetches(&drain(&mut m))[0];
    assert_eq!(
        f.2,
        FetchRange::FromTo {
            start: 100,
            end: 199
        },
        "the first fetch forwards the client's Range"
    );
    let partial = FetchResponse {
        status: 206,
        digest: req.digest.as_ref().map(|d| d.to_string()),
        content_length: Some(100),
        content_range: Some(ContentRange {
            start: 100,
            end: 199,
            size: 1000,
        }),
    };
    m.handle_fetch_responded(t0, f.0, partial).unwrap();
    drain(&mut m);
    m.handle_pipe_interrupted(t0, RequestId(1), 30).unwrap();
    assert_eq!(
        fetches(&drain(&mut m))[0].2,
        FetchRange::FromTo {
            start: 130,
            end: 199
        }
    );
}

#[test]
fn least_used_peer_first() {
    let t0 = Instant::now();
    let mut m = Mirror::new(MirrorConfig::default(), SELF, 5);
    // Request 1 occupies peer 1 or 2; request 2 must pick the other one.
    m.handle_request(t0, RequestId(1), blob_req("k")).unwrap();
    let lid = lookup_id(&drain(&mut m));
    m.handle_providers(t0, lid, peers(&[1, 2])).unwrap();
    let a = fetches(&drain(&mut m))[0].1;
    m.handle_request(t0, RequestId(2), blob_req("k")).unwrap();
    let b = fetches(&drain(&mut m))[0].1;
    assert_ne!(a, b);
}

#[test]
fn each_rejected_answer_names_its_reason() {
    use super::fetches::{Rejection, judge};
    let t0 = Instant::now();
    let mut m = Mirror::new(MirrorConfig::default(), SELF, 9);
    let mut req = blob_req("why");
    req.range = Some(ByteRange::FromTo { start: 10, end: 19 });
    m.handle_request(t0, RequestId(1), req.clone()).unwrap();
    let mut manifest = blob_req("manifest");
    manifest.manifest = true;
    m.handle_request(t0, RequestId(2), manifest.clone())
        .unwrap();
    let (blob, man) = (&m.requests[&RequestId(1)], &m.requests[&RequestId(2)]);
    let part = |len, start, end, size| FetchResponse {
        status: 206,
        content_length: len,
        content_range: Some(ContentRange { start, end, size }),
        ..ok_200(&req, 0)
    };
    assert_eq!(judge(blob, None, &part(Some(10), 10, 19, 100)), Ok(()));
    let cap = crate::manifest::MAX_MANIFEST_SIZE as u64;
    let cases = [
        (
            judge(blob, None, &part(None, 10, 19, 100)),
            Rejection::NoLength,
            "a body without Content-Length",
        ),
        (
            judge(blob, None, &part(Some(11), 10, 19, 100)),
            Rejection::LengthNotRange {
                length: 11,
                range: 10,
            },
            "Content-Length 11 is not the 10 bytes of its Content-Range",
        ),
        (
            judge(man, None, &ok_200(&manifest, cap + 1)),
            Rejection::ManifestTooLarge(cap + 1),
            "a manifest of 4194305 bytes, larger than a manifest may be (4194304)",
        ),
        (
            judge(blob, None, &part(Some(10), 0, 9, 100)),
            Rejection::Range,
            "Content-Range is not the range asked for",
        ),
    ];
    for (got, want, text) in cases {
        assert_eq!(got, Err(want));
        assert_eq!(want.to_string(), text);
    }
    // A continuation of a 1000-byte blob that claims another size.
    let r = m.requests.get_mut(&RequestId(1)).unwrap();
    r.phase = Phase::Resuming {
        start: 10,
        end: 19,
        written: 5,
    };
    r.size = Some(1000);
    let r = &m.requests[&RequestId(1)];
    assert_eq!(
        judge(r, Some((15, 19)), &part(Some(5), 15, 19, 1000)),
        Ok(())
    );
    let lie = Rejection::SizeNotKnown {
        claimed: 2000,
        known: 1000,
    };
    assert_eq!(
        judge(r, Some((15, 19)), &part(Some(5), 15, 19, 2000)),
        Err(lie)
    );
    assert_eq!(
        lie.to_string(),
        "a size of 2000 bytes, not the 1000 bytes already known for the digest"
    );
}
