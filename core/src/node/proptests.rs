//! Random adapter behaviour, fed to the node as [`Input`]s (the one encoding of inputs): no
//! sequence panics, no handled timer is left in the past, every request ends, and the same
//! seed and trace give the same outputs.

// A test picks any origin for its simulated time.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::time::Instant;

use proptest::prelude::*;

use super::sim::{Step, content, finish, provider, run};
use super::*;
use crate::digest::Digest;
use crate::mirror::{ContentRange, FetchFailure, FetchId, FetchResponse, LookupId};
use crate::store::StoreEvent;

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
        let Ok(r) = run(Instant::now(), 1, &trace) else {
            continue;
        };
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
        let t0 = Instant::now();
        let mut a = run(t0, seed, &steps).map_err(TestCaseError::fail)?;
        let b = run(t0, seed, &steps).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&a.trace, &b.trace);
        finish(&mut a).map_err(TestCaseError::fail)?;
    }
}

/// Inputs the node fuzz target found (`fuzz/fuzz_targets/node.rs`), kept as regressions.
#[test]
fn fuzz_findings_stay_fixed() {
    // A time-to-first-byte of 0 made another request's hedge due at once, and its timer was
    // left at the current time instead of the hedge starting.
    let data: &[u8] = &[
        0x4a, 0x02, 0x61, 0x61, 0xa1, 0x26, 0x08, 0x9c, 0x9c, 0x0a, 0x00, 0x99, 0x00, 0x99, 0x05,
        0x9c, 0x9c, 0x01, 0x00, 0xe1, 0x3d, 0x20, 0xa0, 0x02, 0x02, 0x02, 0x00, 0xda, 0xca, 0x06,
        0x00, 0x00, 0x00, 0x9a, 0x3b, 0x00, 0x00, 0x9a, 0x3b,
    ];
    let seed = u64::from_le_bytes(data[..8].try_into().unwrap());
    let steps = super::sim::steps_from_bytes(&data[8..]);
    let mut r = run(Instant::now(), seed, &steps).unwrap();
    finish(&mut r).unwrap();
}
