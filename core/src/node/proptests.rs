//! Random adapter behaviour, fed to the node as [`Input`]s (the one encoding of inputs): no
//! sequence panics, no handled timer is left in the past, every request ends, and the same
//! seed and trace give the same outputs.

// A test picks any origin for its simulated time.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;

use super::*;
use crate::digest::Digest;
use crate::mirror::{ContentRange, FetchFailure, FetchId, FetchResponse, LookupId};
use crate::request::{RegistryRequest, parse_request};
use crate::store::StoreEvent;

const SELF: u32 = 0;

/// One step of the adapter: a fact, or time passing (and the timer firing).
#[derive(Debug, Clone)]
enum Step {
    In(Input<u32>),
    Advance(u16),
}

fn content(
    key: u8,
    kind: u8,
    head: bool,
    mirrored: bool,
    range: Option<(u64, u64)>,
) -> ContentRequest {
    let d = Digest::sha256_of(format!("k{}", key % 3).as_bytes());
    let path = match kind % 3 {
        0 => format!("/v2/x/blobs/{d}?ns=127.0.0.1%3A5000"),
        1 => format!("/v2/x/manifests/{d}?ns=127.0.0.1%3A5000"),
        _ => format!("/v2/x/manifests/v{}?ns=127.0.0.1%3A5000", key % 3),
    };
    let mut headers = HeaderMap::new();
    if mirrored {
        headers.insert("x-spegel-mirrored", HeaderValue::from_static("true"));
    }
    if let Some((a, b)) = range {
        let v = format!("bytes={}-{}", a.min(b), a.max(b));
        headers.insert(http::header::RANGE, HeaderValue::from_str(&v).unwrap());
    }
    let method = if head { Method::HEAD } else { Method::GET };
    match parse_request(&method, &path, &headers).unwrap() {
        RegistryRequest::Content(c) => c,
        other => panic!("not content: {other:?}"),
    }
}

fn local() -> impl Strategy<Value = Local> {
    prop_oneof![
        1 => (0u8..3, 0u64..3000).prop_map(|(k, size)| Local::Present {
            digest: Digest::sha256_of(format!("k{k}").as_bytes()),
            size,
        }),
        3 => Just(Local::Absent),
        1 => Just(Local::Unknown),
    ]
}

/// Peer `n` has one to three registry addresses.
fn provider(n: u32) -> (u32, Vec<SocketAddr>) {
    let addrs = (0..=(n % 3) as u16)
        .map(|i| SocketAddr::from(([192, 0, 2, n as u8], 5000 + i)))
        .collect();
    (n, addrs)
}

fn input() -> impl Strategy<Value = Input<u32>> {
    prop_oneof![
        (
            0u8..6,
            (0u8..6, 0u8..3, any::<bool>(), any::<bool>()),
            proptest::option::of((0u64..1500, 0u64..1500)),
        )
            .prop_map(|(id, (key, kind, head, mirrored), range)| Input::Request {
                id: RequestId(id.into()),
                request: content(key, kind, head, mirrored, range),
            }),
        (0u8..6, local()).prop_map(|(r, local)| Input::LocalAnswered {
            request: RequestId(r.into()),
            local,
        }),
        (0u8..6).prop_map(|r| Input::RequestClosed {
            request: RequestId(r.into())
        }),
        (0u8..6, proptest::collection::vec(0u32..8, 0..4)).prop_map(|(l, providers)| {
            Input::Providers {
                lookup: LookupId(l.into()),
                providers: providers.into_iter().map(provider).collect(),
            }
        }),
        (0u8..6).prop_map(|l| Input::LookupFinished {
            lookup: LookupId(l.into())
        }),
        (0u8..12).prop_map(|f| Input::FetchConnected {
            fetch: FetchId(f.into())
        }),
        (0u8..12, any::<bool>()).prop_map(|(f, connect)| Input::FetchFailed {
            fetch: FetchId(f.into()),
            why: if connect {
                FetchFailure::Connect("refused".into())
            } else {
                FetchFailure::Broken("reset".into())
            },
        }),
        (
            0u8..12,
            prop_oneof![Just(200u16), Just(206), Just(404), Just(416), Just(500)],
            any::<bool>(),
            proptest::option::of((0u64..2000, 0u64..2000))
        )
            .prop_map(|(f, status, good, range)| Input::FetchResponded {
                fetch: FetchId(f.into()),
                response: FetchResponse {
                    status,
                    digest: (!good).then(|| "sha256:bad".to_string()),
                    content_length: Some(1000),
                    content_range: range.map(|(a, b)| ContentRange {
                        start: a.min(b),
                        end: a.max(b),
                        size: 2000,
                    }),
                },
            }),
        (0u8..6, 0u64..2000).prop_map(|(r, written)| Input::PipeProgress {
            request: RequestId(r.into()),
            written,
        }),
        (0u8..6).prop_map(|r| Input::PipeFinished {
            request: RequestId(r.into())
        }),
        (0u8..6, 0u64..2000).prop_map(|(r, written)| Input::PipeInterrupted {
            request: RequestId(r.into()),
            written,
        }),
        prop_oneof![
            Just(Input::Store(StoreEvent::Disconnected)),
            Just(Input::Store(StoreEvent::Snapshot(vec![]))),
        ],
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => input().prop_map(Step::In),
        1 => (0u16..4000).prop_map(Step::Advance),
    ]
}

/// What the run saw: the output trace, the node, the simulated time, and the requests that
/// were accepted and have not ended (by an answer, an abort, the pipe's end or the client's
/// departure).
struct Run {
    trace: Vec<Output<u32>>,
    node: Node<u32>,
    now: Instant,
    open: BTreeSet<RequestId>,
}

fn track(open: &mut BTreeSet<RequestId>, out: &Output<u32>) {
    match out {
        Output::ServeLocal { request, .. }
        | Output::Fail { request, .. }
        | Output::Abort { request } => {
            open.remove(request);
        }
        _ => {}
    }
}

fn settle(run: &mut Run) -> Result<(), TestCaseError> {
    let out: Vec<Output<u32>> = std::iter::from_fn(|| run.node.poll_output()).collect();
    for o in &out {
        track(&mut run.open, o);
        if let Output::Fetch { peer, .. } = o {
            prop_assert_ne!(*peer, SELF, "never fetched from itself");
        }
    }
    run.trace.extend(out);
    Ok(())
}

fn run(seed: u64, steps: &[Step]) -> Result<Run, TestCaseError> {
    let t0 = Instant::now();
    let mut cfg = NodeConfig::new(SELF);
    cfg.seed = seed;
    let mut run = Run {
        trace: Vec::new(),
        node: Node::new(cfg),
        now: t0,
        open: BTreeSet::new(),
    };
    for s in steps {
        match s.clone() {
            Step::In(input) => {
                let opens = match &input {
                    Input::Request { id, .. } => Some(*id),
                    _ => None,
                };
                let ends = match &input {
                    Input::RequestClosed { request } | Input::PipeFinished { request } => {
                        Some(*request)
                    }
                    _ => None,
                };
                let ok = run.node.handle(run.now, input).is_ok();
                if ok {
                    if let Some(id) = opens {
                        run.open.insert(id);
                    }
                    if let Some(id) = ends {
                        run.open.remove(&id);
                    }
                }
            }
            Step::Advance(d) => {
                run.now += Duration::from_millis(d.into());
                run.node.handle_timeout(run.now);
            }
        }
        settle(&mut run)?;
        // Every deadline that passed was handled: none is left in the past.
        if let Some((at, why)) = run.node.poll_timeout() {
            prop_assert!(at > run.now, "timer in the past: {why:?} at {:?}", at - t0);
        }
    }
    Ok(run)
}

proptest! {
    #[test]
    fn any_input_sequence_is_safe_and_deterministic(
        seed in any::<u64>(),
        steps in proptest::collection::vec(step(), 0..80),
    ) {
        let mut a = run(seed, &steps)?;
        let b = run(seed, &steps)?;
        prop_assert_eq!(&a.trace, &b.trace);
        // With no more input, every request ends within the budgets: the store budget, the
        // mirror's budgets, and the stall watchdog for bodies being relayed.
        // (The store re-check is periodic and never ends.)
        for _ in 0..100 {
            match a.node.poll_timeout() {
                Some((at, why)) if why != NodeTimeout::Recheck => {
                    a.now = a.now.max(at);
                    a.node.handle_timeout(a.now);
                    settle(&mut a)?;
                }
                _ => break,
            }
        }
        let left = a.node.poll_timeout();
        prop_assert!(
            left.is_none_or(|(_, why)| why == NodeTimeout::Recheck),
            "timers left: {:?}",
            left
        );
        prop_assert!(a.open.is_empty(), "requests that never ended: {:?}", a.open);
        prop_assert_eq!(a.node.mirror().active_requests(), 0);
        prop_assert_eq!(a.node.mirror().active_fetches(), 0);
    }
}
