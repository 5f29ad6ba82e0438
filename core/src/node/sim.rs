//! A deterministic simulation of the adapters around a [`Node`]: steps (facts, plausible
//! answers to the commands waiting for one, time passing) fed to the node as [`Input`]s, with
//! the checks every run must pass — no panic, no handled timer left in the past, never a fetch
//! from itself, and, once the input stops, every request ends within the budgets. The node's
//! property tests and its fuzz target (`fuzz/fuzz_targets/node.rs`) both drive it; the fuzz
//! target builds it with the `fuzzing` feature.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::digest::Digest;
use crate::mirror::{ContentRange, FetchFailure, FetchId, FetchRange, FetchResponse, LookupId};
use crate::request::{RegistryRequest, parse_request};
use crate::store::StoreEvent;

/// The simulated node's own peer.
pub const SELF: u32 = 0;

/// One step of the adapter: a fact (any, well-formed or not), a plausible answer to one of
/// the commands still waiting for one (picked by the first number, shaped by the second), or
/// time passing (and the timer firing).
#[derive(Debug, Clone)]
pub enum Step {
    /// A fact.
    In(Input<u32>),
    /// An answer to a waiting command: which one, and its shape.
    Reply(u8, u8),
    /// Time passes by this many milliseconds, and the timer fires.
    Advance(u16),
}

/// Whether a command waits for an answer from the adapter.
pub fn awaits_answer(o: &Output<u32>) -> bool {
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
pub fn reply(command: &Output<u32>, v: u8) -> (Input<u32>, bool) {
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

pub fn content(
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

/// Peer `n` has one to three registry addresses.
pub fn provider(n: u32) -> (u32, Vec<SocketAddr>) {
    let addrs = (0..=(n % 3) as u16)
        .map(|i| SocketAddr::from(([192, 0, 2, n as u8], 5000 + i)))
        .collect();
    (n, addrs)
}

/// What the run saw: the output trace, the node, the simulated time, and the requests that
/// were accepted and have not ended (by an answer, an abort, the pipe's end or the client's
/// departure).
pub struct Run {
    /// Every output, in order.
    pub trace: Vec<Output<u32>>,
    /// The node.
    pub node: Node<u32>,
    /// The simulated time.
    pub now: Instant,
    /// Requests accepted and not ended.
    pub open: BTreeSet<RequestId>,
    /// Commands that wait for an answer, oldest first.
    pub pending: Vec<Output<u32>>,
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

pub fn settle(run: &mut Run) -> Result<(), String> {
    let out: Vec<Output<u32>> = std::iter::from_fn(|| run.node.poll_output()).collect();
    for o in &out {
        track(&mut run.open, o);
        if let Output::Fetch { peer, .. } = o
            && *peer == SELF
        {
            return Err("fetched from itself".into());
        }
        if awaits_answer(o) {
            run.pending.push(o.clone());
        }
    }
    run.trace.extend(out);
    Ok(())
}

pub fn run(t0: Instant, seed: u64, steps: &[Step]) -> Result<Run, String> {
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
        if let Some((at, why)) = run.node.poll_timeout()
            && at <= run.now
        {
            return Err(format!(
                "timer in the past: {why:?} at {:?} (now {:?}); trace: {:#?}",
                at - t0,
                run.now - t0,
                run.trace
            ));
        }
    }
    Ok(run)
}

/// With no more input, lets time pass until every request ended within the budgets (the
/// store budget, the mirror's budgets, the stall watchdog for bodies being relayed; the
/// periodic store re-check never ends), and checks that nothing is left.
pub fn finish(run: &mut Run) -> Result<(), String> {
    for _ in 0..1000 {
        let busy = !run.open.is_empty() || run.node.mirror().active_requests() > 0;
        match run.node.poll_timeout() {
            Some((at, why)) if why != NodeTimeout::Recheck || busy => {
                run.now = run.now.max(at);
                run.node.handle_timeout(run.now);
                settle(run)?;
            }
            _ => break,
        }
    }
    let left = run.node.poll_timeout();
    if !left.is_none_or(|(_, why)| why == NodeTimeout::Recheck) {
        return Err(format!("timers left: {left:?}"));
    }
    if !run.open.is_empty() {
        return Err(format!("requests that never ended: {:?}", run.open));
    }
    if run.node.mirror().active_requests() != 0 || run.node.mirror().active_fetches() != 0 {
        return Err(format!(
            "{} requests and {} fetches left in the mirror",
            run.node.mirror().active_requests(),
            run.node.mirror().active_fetches()
        ));
    }
    Ok(())
}

/// Steps decoded from arbitrary bytes (a fuzzer's input), four bytes per step: kind, then
/// three bytes that shape it. Every byte string decodes.
pub fn steps_from_bytes(data: &[u8]) -> Vec<Step> {
    data.chunks(4)
        .map(|c| {
            let b = |i: usize| c.get(i).copied().unwrap_or(0);
            match b(0) % 10 {
                0..=3 => Step::Reply(b(1), b(2)),
                4 => Step::Advance(u16::from(b(1)) % 60),
                5 => Step::Advance(u16::from_le_bytes([b(1), b(2)]) % 12_000),
                6 => Step::In(Input::Request {
                    id: RequestId(u64::from(b(1) % 8)),
                    request: content(
                        b(2),
                        b(2) / 3,
                        b(3) & 1 == 1,
                        b(3) & 2 == 2,
                        (b(3) & 4 == 4).then(|| (u64::from(b(1)) * 7, u64::from(b(2)) * 11)),
                    ),
                }),
                7 => Step::In(Input::RequestClosed {
                    request: RequestId(u64::from(b(1) % 8)),
                }),
                8 => Step::In(match b(1) % 4 {
                    0 => Input::PipeFinished {
                        request: RequestId(u64::from(b(2) % 8)),
                    },
                    1 => Input::PipeMismatch {
                        request: RequestId(u64::from(b(2) % 8)),
                    },
                    2 => Input::PipeInterrupted {
                        request: RequestId(u64::from(b(2) % 8)),
                        written: u64::from(b(3)) * 13,
                    },
                    _ => Input::PipeProgress {
                        request: RequestId(u64::from(b(2) % 8)),
                        written: u64::from(b(3)) * 13,
                    },
                }),
                _ => Step::In(match b(1) % 4 {
                    0 => Input::Store(StoreEvent::Disconnected),
                    1 => Input::Store(StoreEvent::Snapshot(vec![])),
                    2 => Input::LookupFinished {
                        lookup: LookupId(u64::from(b(2) % 8)),
                    },
                    _ => Input::FetchConnected {
                        fetch: FetchId(u64::from(b(2) % 16)),
                    },
                }),
            }
        })
        .collect()
}
