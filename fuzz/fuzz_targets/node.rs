//! The node state machine driven by arbitrary adapter behaviour (facts, answers to its
//! commands, time passing): no input sequence panics, leaves a handled timer in the past or
//! makes the node fetch from itself, the same input gives the same outputs, and once the input
//! stops every request ends within the budgets.
//!
//! Input: 8 bytes of RNG seed, then four bytes per step (`speil_core::node::sim`).
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use speil_core::node::sim;

fuzz_target!(|data: &[u8]| {
    let mut seed = [0u8; 8];
    let n = data.len().min(8);
    seed[..n].copy_from_slice(&data[..n]);
    let steps = sim::steps_from_bytes(data.get(8..).unwrap_or_default());
    let t0 = Instant::now();
    let mut a = match sim::run(t0, u64::from_le_bytes(seed), &steps) {
        Ok(run) => run,
        Err(e) => panic!("{e}"),
    };
    let b = sim::run(t0, u64::from_le_bytes(seed), &steps).expect("the same run again");
    assert_eq!(a.trace, b.trace, "the same input gave other outputs");
    if let Err(e) = sim::finish(&mut a) {
        panic!("{e}");
    }
});
