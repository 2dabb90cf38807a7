//! Seeded fuzzing of the real XDP object (see veer_tests::fuzz for the invariants):
//! at least 100,000 frames, bounded in time. `cargo xtask fuzz --frames N` runs more.

use std::time::Duration;

use veer_tests::fixture::with_fixture;

#[test]
fn random_frames_keep_the_data_path_invariants() {
    let frames: u64 = std::env::var("VEER_FUZZ_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("VEER_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_f022);
    // Time bound: generous for 100,000 frames on a loaded 2-core machine; a longer run
    // asked for with VEER_FUZZ_FRAMES gets time in proportion.
    let limit = Duration::from_secs(120 + frames / 2_000);
    with_fixture(move |fx| {
        let r = veer_tests::fuzz::run(fx, seed, frames, limit);
        println!(
            "fuzz seed {seed:#x}: {} frames in {:.1?} ({} forwarded, {} passed, {} dropped, {} answered with ICMP)",
            r.frames, r.elapsed, r.forwarded, r.passed, r.dropped, r.answered
        );
        assert!(
            r.frames >= frames.min(100_000),
            "only {} frames ran within {limit:?}",
            r.frames
        );
        assert!(
            r.forwarded > r.frames / 5 && r.passed > 0 && r.dropped > 0,
            "the generator reaches every verdict: {r:?}"
        );
    });
}
