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
use crate::mirror::{ContentRange, FetchFailure, FetchId, FetchRange, FetchResponse, LookupId};
use crate::request::{RegistryRequest, parse_request};
use crate::store::StoreEvent;

const SELF: u32 = 0;

/// One step of the adapter: a fact (any, well-formed or not), a plausible answer to one of
/// the commands still waiting for one (picked by the first number, shaped by the second), or
/// time passing (and the timer firing).
#[derive(Debug, Clone)]
enum Step {
    In(Input<u32>),
    Reply(u8, u8),
    Advance(u16),
}

/// Whether a command waits for an answer from the adapter.
fn awaits_answer(o: &Output<u32>) -> bool {
    matches!(
        o,
        Output::StatLocal { .. }
            | Output::Lookup { .. }
            | Output::Fetch { .. }
            | Output::Serve { .. }
            | Output::Continue { .. }
            | Output::PollProgress { .. }
            | Output::Interrupt { .. }
    )
}

/// A plausible answer to `command` (shaped by `v`), and whether the command still waits for
/// more answers after it.
fn reply(command: &Output<u32>, v: u8) -> (Input<u32>, bool) {
    // Nothing, or some bytes of the body.
    let written = u64::from(v % 4) * 37;
    match command {
        Output::StatLocal { request, what } => {
            let digest = match what {
                StatTarget::Digest(d) => d.clone(),
                StatTarget::Tag { .. } => Digest::sha256_of(b"k0"),
            };
            let local = match v % 4 {
                0 => Local::Present {
                    digest,
                    size: u64::from(v) * 13,
                },
                1 => Local::Unknown,
                _ => Local::Absent,
            };
            let request = *request;
            (Input::LocalAnswered { request, local }, false)
        }
        Output::Lookup { id, .. } => match v % 4 {
            3 => (Input::LookupFinished { lookup: *id }, false),
            _ => {
                let providers = vec![provider(1 + u32::from(v % 6))];
                let lookup = *id;
                (Input::Providers { lookup, providers }, true)
            }
        },
        Output::Fetch {
            id, path, range, ..
        } => {
            // The digest asked for, when the path names one.
            let digest = path
                .rsplit('/')
                .next()
                .and_then(|r| r.split('?').next())
                .filter(|r| r.starts_with("sha256:"))
                .map(str::to_owned);
            let (status, content_range) = match *range {
                FetchRange::Whole => (200, None),
                FetchRange::FromTo { start, end } => (206, Some((start, end.min(1999)))),
                FetchRange::From { start } => (206, Some((start, 1999))),
                FetchRange::Suffix { len } => (206, Some((2000 - len.min(2000), 1999))),
            };
            match v % 4 {
                0 => (Input::FetchConnected { fetch: *id }, true),
                1 => {
                    let why = FetchFailure::Connect("refused".into());
                    (Input::FetchFailed { fetch: *id, why }, false)
                }
                _ => {
                    let response = FetchResponse {
                        status,
                        digest,
                        content_length: Some(match content_range {
                            Some((a, b)) => b.saturating_sub(a) + 1,
                            None => 2000,
                        }),
                        content_range: content_range.map(|(start, end)| ContentRange {
                            start,
                            end,
                            size: 2000,
                        }),
                    };
                    (
                        Input::FetchResponded {
                            fetch: *id,
                            response,
                        },
                        false,
                    )
                }
            }
        }
        Output::Serve { request, .. } | Output::Continue { request, .. } => match v % 4 {
            0 => (Input::PipeFinished { request: *request }, false),
            // A body that did not match its digest.
            1 => (Input::PipeMismatch { request: *request }, false),
            _ => {
                let request = *request;
                (Input::PipeInterrupted { request, written }, false)
            }
        },
        Output::PollProgress { request } => {
            let request = *request;
            (Input::PipeProgress { request, written }, false)
        }
        Output::Interrupt { request } => {
            let request = *request;
            (Input::PipeInterrupted { request, written }, false)
        }
        _ => (Input::Store(StoreEvent::Disconnected), false),
    }
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
            0u8..5,
            proptest::option::of((0u64..2000, 0u64..2000))
        )
            .prop_map(|(f, status, digest, range)| Input::FetchResponded {
                fetch: FetchId(f.into()),
                response: FetchResponse {
                    status,
                    // One of the requested digests, none, or a lie.
                    digest: match digest {
                        0..3 =>
                            Some(Digest::sha256_of(format!("k{digest}").as_bytes()).to_string()),
                        3 => None,
                        _ => Some("sha256:bad".to_string()),
                    },
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
        3 => input().prop_map(Step::In),
        4 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| Step::Reply(a, b)),
        2 => (0u16..60).prop_map(Step::Advance),
        1 => (0u16..12_000).prop_map(Step::Advance),
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
    /// Commands that wait for an answer, oldest first.
    pending: Vec<Output<u32>>,
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
        if awaits_answer(o) {
            run.pending.push(o.clone());
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
        pending: Vec::new(),
    };
    for s in steps {
        let input = match s.clone() {
            Step::In(input) => Some(input),
            Step::Reply(_, _) if run.pending.is_empty() => None,
            Step::Reply(pick, v) => {
                let i = usize::from(pick) % run.pending.len();
                let (input, again) = reply(&run.pending[i], v);
                if !again {
                    run.pending.remove(i);
                }
                Some(input)
            }
            Step::Advance(d) => {
                run.now += Duration::from_millis(d.into());
                run.node.handle_timeout(run.now);
                None
            }
        };
        if let Some(input) = input {
            let opens = match &input {
                Input::Request { id, .. } => Some(*id),
                _ => None,
            };
            let ends = match &input {
                // The pipe aborted a body that did not match its digest.
                Input::RequestClosed { request }
                | Input::PipeFinished { request }
                | Input::PipeMismatch { request } => Some(*request),
                // A body reported broken after all of it was delivered is complete.
                Input::PipeInterrupted { request, .. } => Some(*request),
                _ => None,
            };
            let ok = run.node.handle(run.now, input).is_ok();
            if ok {
                if let Some(id) = opens {
                    run.open.insert(id);
                }
                if let Some(id) = ends
                    && !run.node.is_active(id)
                {
                    run.open.remove(&id);
                }
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

/// The generator reaches the interesting states: bodies relayed, polled, interrupted and
/// continued, and local answers served (a property test that never got there would prove
/// little).
#[test]
fn the_generated_traces_reach_every_policy() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::deterministic_rng(Config::default().rng_algorithm),
    );
    let steps = proptest::collection::vec(step(), 40..80);
    let mut seen = BTreeSet::new();
    for _ in 0..400 {
        let trace = steps.new_tree(&mut runner).unwrap().current();
        let Ok(r) = run(1, &trace) else { continue };
        for o in &r.trace {
            seen.insert(match o {
                Output::StatLocal { .. } => "stat",
                Output::ServeLocal { .. } => "serve-local",
                Output::Serve { .. } => "serve",
                Output::PollProgress { .. } => "poll",
                Output::Interrupt { .. } => "interrupt",
                Output::Continue { .. } => "continue",
                Output::Abort { .. } => "abort",
                _ => "other",
            });
        }
    }
    for want in [
        "stat",
        "serve-local",
        "serve",
        "poll",
        "interrupt",
        "continue",
        "abort",
    ] {
        assert!(seen.contains(want), "never saw {want}: {seen:?}");
    }
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
        for _ in 0..1000 {
            let busy = !a.open.is_empty() || a.node.mirror().active_requests() > 0;
            match a.node.poll_timeout() {
                Some((at, why)) if why != NodeTimeout::Recheck || busy => {
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
