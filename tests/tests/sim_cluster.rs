//! Simulated cluster (DESIGN.md §3, layer 2): several nodes, each the REAL driver
//! (`speil_driver::node::start`) with a real core `Node` behind the real registry service, on
//! a simulated clock (`speil_tests::sim`). The DHT, the stores and the links between nodes are
//! fakes, so that hedging, budgets, resume and determinism can be checked exactly and in
//! milliseconds. Sockets, the HTTP codec and hyper are exercised by the end-to-end tests.

use std::time::Duration;

use speil_core::mirror::FetchRange;
use speil_core::{Digest, Key};
use speil_tests::sim::{BodyEnd, Cluster, Event, Outcome, Record};

const MS: Duration = Duration::from_millis(1);
const S: Duration = Duration::from_secs(1);

/// The fetches node `node` issued: (when, peer, range).
fn fetches(trace: &[Record], node: u32) -> Vec<(Duration, u32, FetchRange)> {
    trace
        .iter()
        .filter(|r| r.node == node)
        .filter_map(|r| match &r.event {
            Event::Fetch { peer, range, .. } => Some((r.at, *peer, *range)),
            _ => None,
        })
        .collect()
}

fn served(sim: &Cluster, id: speil_tests::sim::ClientId) -> (u16, u64, Digest, Duration) {
    match sim.outcome(id) {
        Some(Outcome::Served {
            status,
            len,
            digest,
            at,
        }) => (status, len, digest, at),
        other => panic!("{id:?}: {other:?}\n{:#?}", sim.trace()),
    }
}

#[test]
fn a_blob_held_by_one_node_is_served_to_every_other() {
    let mut sim = Cluster::new(5, 7);
    let d = sim.give(0, "layer", 10_000);
    let reqs: Vec<_> = (1..5).map(|n| (n, sim.request(n, &d, None))).collect();
    // Lookup 1 ms, dial 1 ms, ttfb 2 ms, 10 ms of body.
    assert_eq!(sim.settle(10 * S), 14 * MS);
    for (n, r) in reqs {
        let (status, len, digest, _) = served(&sim, r);
        assert_eq!((status, len, &digest), (200, 10_000, &d), "node {n}");
        assert_eq!(sim.fed_by(n), vec![0], "node {n}");
    }
    // The holder itself serves from its store and never asks itself.
    let before = sim.trace().len();
    let r = sim.request(0, &d, None);
    sim.run_for(10 * S);
    let (status, _, digest, _) = served(&sim, r);
    assert_eq!((status, &digest), (200, &d));
    let trace = sim.trace();
    assert!(
        trace[before..].iter().any(|r| r.node == 0
            && matches!(&r.event, Event::Opened { digest, offset: 0, len: 10_000 } if *digest == d)),
        "{:#?}",
        &trace[before..]
    );
    assert!(fetches(&trace, 0).is_empty());
    assert!(sim.fed_by(0).is_empty());
}

#[test]
fn a_slow_peer_is_overtaken_by_a_hedge() {
    let mut hedged = 0;
    for seed in 0..16 {
        let mut sim = Cluster::new(4, seed);
        let d = sim.give(1, "blob", 1000);
        sim.give(2, "blob", 1000);
        sim.give(3, "blob", 1000);
        sim.link(1, |l| l.ttfb = 30 * S);
        sim.link(2, |l| l.ttfb = 30 * S);
        let r = sim.request(0, &d, None);
        sim.run_until(60 * S);
        let (_, _, digest, at) = served(&sim, r);
        assert_eq!(digest, d);
        assert_eq!(sim.fed_by(0), vec![3], "seed {seed}");
        // Lookup 1 ms + at most the hedges at 50 ms (nothing observed yet) + dial 1 ms +
        // ttfb 2 ms + 1 ms of body: never the 30 s of the slow peers.
        assert!(at <= 60 * MS, "seed {seed}: served at {at:?}");
        let trace = sim.trace();
        let all = fetches(&trace, 0);
        if all[0].1 != 3 {
            hedged += 1;
            assert!(at >= 50 * MS, "the hedge waited for its threshold: {at:?}");
            let hedge = all
                .iter()
                .find(|f| f.1 == 3)
                .expect("a hedge to the fast peer");
            assert!(hedge.0 >= 50 * MS, "{all:?}");
        }
    }
    assert!(hedged > 0, "no seed picked a slow peer first");
}

#[test]
fn hedges_follow_observed_latency() {
    let mut sim = Cluster::new(3, 3);
    let d = sim.give(1, "warm", 1000);
    sim.give(2, "warm", 1000);
    // Warm up: observed time-to-first-byte is 2 ms, so p80 is 2 ms.
    for _ in 0..20 {
        let r = sim.request(0, &d, None);
        sim.run_for(S);
        assert_eq!(served(&sim, r).2, d);
    }
    let d2 = sim.give(1, "cold", 1000);
    sim.give(2, "cold", 1000);
    sim.link(1, |l| l.ttfb = 40 * MS);
    sim.link(2, |l| l.ttfb = 40 * MS);
    let start = sim.now();
    let r = sim.request(0, &d2, None);
    sim.run_for(5 * S);
    // Both peers are asked: the second 2 ms after the first (p80 of the observed latency),
    // and the first answer wins.
    let (_, _, digest, at) = served(&sim, r);
    assert_eq!(digest, d2);
    let served_after = at - start;
    assert!(
        served_after >= 40 * MS && served_after <= 45 * MS,
        "{served_after:?}"
    );
    let trace = sim.trace();
    let cold: Vec<_> = fetches(&trace, 0)
        .into_iter()
        .filter(|f| f.0 >= start)
        .map(|f| f.0 - start)
        .collect();
    assert_eq!(cold, vec![MS, 3 * MS], "{:#?}", &trace[trace.len() - 12..]);
}

#[test]
fn dead_and_lying_peers_are_skipped() {
    let mut sim = Cluster::new(4, 11);
    let d = sim.give(1, "x", 5000);
    sim.give(2, "x", 5000);
    sim.give(3, "x", 5000);
    sim.link(1, |l| l.dial = None);
    sim.link(2, |l| l.lies = true);
    let r = sim.request(0, &d, None);
    sim.run_until(10 * S);
    let (status, len, digest, _) = served(&sim, r);
    assert_eq!((status, len, digest), (200, 5000, d));
    assert_eq!(sim.fed_by(0), vec![3]);
    // The liar answered and was not relayed; the dead peer never connected.
    let trace = sim.trace();
    assert!(
        trace
            .iter()
            .any(|r| r.node == 0 && r.event == Event::Connected { peer: 2 })
    );
    assert!(
        !trace
            .iter()
            .any(|r| r.node == 0 && r.event == Event::Connected { peer: 1 })
    );
}

#[test]
fn a_peer_that_never_accepts_is_given_up_after_the_dial_budget() {
    let mut sim = Cluster::new(2, 1);
    let d = sim.give(1, "x", 5000);
    sim.link(1, |l| l.dial = None);
    let r = sim.request(0, &d, None);
    sim.run_until(10 * S);
    // Lookup 1 ms, then the 200 ms dial budget: not the 3 s manifest budget, not forever.
    assert_eq!(
        sim.outcome(r),
        Some(Outcome::Failed {
            status: 404,
            message: format!("all 1 attempts failed for {d}"),
            at: 201 * MS
        })
    );
    assert_eq!(fetches(&sim.trace(), 0), vec![(MS, 1, FetchRange::Whole)]);
}

#[test]
fn a_store_that_does_not_answer_is_given_up_after_the_store_budget() {
    let mut sim = Cluster::new(3, 2);
    let d = sim.give(1, "x", 1000);
    sim.hang_store(0);
    // Node 0's own client: the store budget (3 s) ends the wait, then node 0 mirrors.
    let r = sim.request(0, &d, None);
    sim.settle(10 * S);
    let (status, _, digest, at) = served(&sim, r);
    assert_eq!((status, digest), (200, d.clone()));
    // 3 s, then lookup 1 ms, dial 1 ms, ttfb 2 ms, 1 ms of body.
    assert_eq!(at, 3 * S + 5 * MS);
    assert_eq!(sim.fed_by(0), vec![1]);
    // A peer asking a node whose store hangs does not wait for that node's store budget:
    // its own header budget (100 ms at least) gives up first.
    sim.hang_store(1);
    let start = sim.now();
    let r = sim.request(2, &d, None);
    sim.settle(start + 10 * S);
    // Lookup 1 ms, dial 1 ms, then the 100 ms header budget: not node 1's 3 s.
    assert_eq!(
        sim.outcome(r),
        Some(Outcome::Failed {
            status: 404,
            message: format!("all 1 attempts failed for {d}"),
            at: start + 102 * MS
        })
    );
    assert!(
        !sim.trace()
            .iter()
            .any(|e| e.node == 2 && matches!(e.event, Event::Responded { .. }))
    );
}

#[test]
fn a_broken_body_is_resumed_and_contiguous() {
    let mut sim = Cluster::new(4, 5);
    let d = sim.give(1, "big", 100_000);
    sim.give(2, "big", 100_000);
    sim.give(3, "big", 100_000);
    for p in [1, 2] {
        sim.link(p, |l| l.break_after = Some(30_000));
    }
    let r = sim.request(0, &d, None);
    sim.run_until(10 * S);
    // The client got exactly the blob: contiguous, complete, once (its digest matches).
    let (status, len, digest, _) = served(&sim, r);
    assert_eq!((status, len, digest), (200, 100_000, d));
    let peers = sim.fed_by(0);
    assert!(peers.len() >= 2 && peers.ends_with(&[3]), "{peers:?}");
    let trace = sim.trace();
    // The resume asked for exactly the rest.
    assert!(
        fetches(&trace, 0).iter().any(|f| f.2
            == FetchRange::FromTo {
                start: 30_000,
                end: 99_999
            }),
        "{:?}",
        fetches(&trace, 0)
    );
    assert!(trace.iter().any(|r| matches!(
        r.event,
        Event::Body {
            delivered: 30_000,
            end: BodyEnd::Broke,
            ..
        }
    )));
}

#[test]
fn a_client_range_is_resumed_inside_the_range() {
    let mut resumed = 0;
    for seed in 0..8 {
        let mut sim = Cluster::new(3, seed);
        let d = sim.give(1, "ranged", 100_000);
        sim.give(2, "ranged", 100_000);
        sim.link(1, |l| l.break_after = Some(10_000));
        let r = sim.request(0, &d, Some("bytes=1000-49999"));
        sim.run_until(10 * S);
        let (status, len, digest, _) = served(&sim, r);
        let want = Digest::sha256_of(&sim.blob(&d)[1000..50_000]);
        assert_eq!((status, len, digest), (206, 49_000, want), "seed {seed}");
        let trace = sim.trace();
        let all = fetches(&trace, 0);
        let range = |start, end| FetchRange::FromTo { start, end };
        assert_eq!(all[0].2, range(1000, 49_999), "seed {seed}");
        if all[0].1 == 1 {
            // Peer 1 broke after 10 000 bytes of the range: the rest of the range, not of
            // the blob.
            resumed += 1;
            assert_eq!(
                all.last(),
                Some(&(all.last().unwrap().0, 2, range(11_000, 49_999)))
            );
            assert_eq!(sim.fed_by(0), vec![1, 2], "seed {seed}");
        }
    }
    assert!(resumed > 0, "no seed asked the breaking peer first");
}

#[test]
fn no_peer_to_continue_aborts_instead_of_a_short_body() {
    let mut sim = Cluster::new(2, 5);
    let d = sim.give(1, "big", 100_000);
    sim.link(1, |l| l.break_after = Some(10_000));
    let r = sim.request(0, &d, None);
    sim.run_until(10 * S);
    let Some(Outcome::Aborted { written, .. }) = sim.outcome(r) else {
        panic!("{:?}", sim.outcome(r))
    };
    // A body this small is held until it matched its digest: the client got none of it.
    assert_eq!(written, 0);
}

#[test]
fn nobody_has_it_gives_a_404_within_the_resolve_budget() {
    let mut sim = Cluster::new(3, 5);
    sim.set_lookup_latency(5 * S);
    let d = Digest::sha256_of(b"nowhere");
    let r = sim.request(0, &d, None);
    sim.run_until(10 * S);
    assert_eq!(
        sim.outcome(r),
        Some(Outcome::Failed {
            status: 404,
            message: format!("could not find peer for {d}"),
            at: 20 * MS
        })
    );
}

#[test]
fn same_seed_same_trace() {
    let scenario = |seed| {
        let mut sim = Cluster::new(6, seed);
        let d = sim.give(1, "b", 50_000);
        for p in 2..6 {
            sim.give(p, "b", 50_000);
            sim.link(p, |l| l.ttfb = Duration::from_millis(u64::from(p) * 7));
        }
        sim.link(2, |l| l.break_after = Some(20_000));
        for _ in 0..10 {
            sim.request(0, &d, None);
        }
        sim.settle(30 * S);
        sim.run_until(30 * S);
        (sim.trace(), sim.outcomes())
    };
    let a = scenario(42);
    assert_eq!(a, scenario(42));
    // The seed is what decides: some other seed picks other peers.
    assert!(
        (0..8).any(|seed| scenario(seed).0 != a.0),
        "the trace does not depend on the seed"
    );
    assert_eq!(a.1.len(), 10);
    assert!(
        a.1.values().all(|o| matches!(o, Outcome::Served { .. })),
        "{:?}",
        a.1
    );
}

#[test]
fn withdrawn_content_is_no_longer_found() {
    let mut sim = Cluster::new(2, 5);
    let d = sim.give(1, "gone", 100);
    assert_eq!(
        sim.providers(&Key::digest(&d))
            .into_iter()
            .collect::<Vec<_>>(),
        vec![1]
    );
    sim.clear(1);
    assert!(sim.providers(&Key::digest(&d)).is_empty());
    let r = sim.request(0, &d, None);
    sim.run_for(S);
    assert!(
        matches!(sim.outcome(r), Some(Outcome::Failed { status: 404, .. })),
        "{:?}",
        sim.outcome(r)
    );
}

#[test]
fn advertise_and_withdraw_come_in_batches() {
    let mut sim = Cluster::new(2, 5);
    let a = sim.give(1, "a", 10);
    let b = sim.give(1, "b", 10);
    let batches = |sim: &Cluster| -> Vec<Event> {
        sim.trace()
            .into_iter()
            .filter(|r| r.node == 1)
            .filter(|r| matches!(r.event, Event::Advertise(_) | Event::Withdraw(_)))
            .map(|r| r.event)
            .collect()
    };
    // Each snapshot announces only what is new.
    assert_eq!(
        batches(&sim),
        vec![
            Event::Advertise(vec![Key::digest(&a)]),
            Event::Advertise(vec![Key::digest(&b)])
        ]
    );
    // Losing everything withdraws it in one sorted batch.
    sim.clear(1);
    let mut both = vec![Key::digest(&a), Key::digest(&b)];
    both.sort();
    assert_eq!(batches(&sim).last(), Some(&Event::Withdraw(both)));
    // Node 0 never advertised anything.
    assert!(
        !sim.trace()
            .iter()
            .any(|r| r.node == 0 && matches!(&r.event, Event::Advertise(k) if !k.is_empty()))
    );
}

#[test]
fn a_stalled_body_is_resumed_by_the_core_watchdog() {
    let mut sim = Cluster::new(3, 5);
    let d = sim.give(1, "stuck", 100_000);
    sim.give(2, "stuck", 100_000);
    sim.link(1, |l| l.stall_after = Some(40_000));
    sim.link(2, |l| l.stall_after = Some(40_000));
    let r = sim.request(0, &d, None);
    sim.run_until(60 * S);
    // Whichever peer went first stalled at 40 000 bytes; the watchdog interrupted it, the
    // other one resumed there and stalled at 40 000 bytes of its part; nobody is left, so the
    // client is aborted. The body is small enough to be held until it matched its digest, so
    // the client got none of its 80 000 bytes.
    let trace = sim.trace();
    let stalled: Vec<_> = trace
        .iter()
        .filter(|r| {
            matches!(
                r.event,
                Event::Body {
                    delivered: 40_000,
                    end: BodyEnd::Stalled,
                    ..
                }
            )
        })
        .map(|r| r.at)
        .collect();
    assert_eq!(stalled.len(), 2, "{trace:#?}");
    assert!(fetches(&trace, 0).iter().any(|f| f.2
        == FetchRange::FromTo {
            start: 40_000,
            end: 99_999
        }));
    let Some(Outcome::Aborted { written, at }) = sim.outcome(r) else {
        panic!("{:?}", sim.outcome(r))
    };
    assert_eq!(written, 0);
    // One stall period per body: 40 000 bytes in the first 5 s are less than the minimum
    // progress (64 KiB per stall timeout), so the first poll already counts it as stalled.
    assert!(stalled[0] >= 5 * S && stalled[0] < 6 * S, "{stalled:?}");
    assert!(at >= 10 * S && at < 11 * S, "{at:?}");
}
