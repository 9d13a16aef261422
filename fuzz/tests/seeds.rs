//! The checks themselves, and the committed seeds: `cargo test --manifest-path
//! fuzz/Cargo.toml` (no fuzzer needed). A seed that fails a check would stop afl-fuzz at
//! its first step.

use shardline_fuzz::{envelope, has_pan_candidate, kpl, txn};

#[test]
fn oracle_finds_card_numbers_however_written() {
    assert!(has_pan_candidate(b"4111111111111111"));
    assert!(has_pan_candidate(b"card: 4111 1111 1111 1111."));
    assert!(has_pan_candidate(b"x4111-1111-1111-1111x"));
    assert!(has_pan_candidate(b"99 4111111111111111 7")); // glued into a longer run
    assert!(!has_pan_candidate(b"4111111111111113")); // no 13-19 stretch passes Luhn
    assert!(!has_pan_candidate(b"411111111111")); // 12 digits: under the oracle's 13
    assert!(!has_pan_candidate(b"4111 1111.1111 1111"));
}

/// Every committed seed passes every check (afl-fuzz refuses to start otherwise), and so
/// does every minimised crash in `regressions/` (each also has a unit test beside the
/// decoder it broke; RELIABILITY.md lists them).
#[test]
fn seeds_and_regressions_pass() {
    let root = env!("CARGO_MANIFEST_DIR");
    for (target, check) in [
        ("envelope", envelope as fn(&[u8])),
        ("kpl", kpl),
        ("txn", txn),
    ] {
        for dir in ["seeds", "regressions"] {
            let Ok(files) = std::fs::read_dir(format!("{root}/{dir}/{target}")) else {
                assert_eq!(dir, "regressions", "no seeds for {target}");
                continue;
            };
            for file in files {
                let path = file.expect("dir entry").path();
                println!("{}", path.display());
                check(&std::fs::read(&path).expect("input"));
            }
        }
    }
}

/// The minimised inputs of `regressions/txn` stay valid events, so that they keep
/// reaching the round trip they once failed (a new validation rule could make them
/// poison and the check above pass vacuously).
#[test]
fn txn_regressions_are_valid_events() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/regressions/txn");
    for file in std::fs::read_dir(dir).expect("regressions/txn") {
        let path = file.expect("dir entry").path();
        let data = std::fs::read(&path).expect("input");
        let r = shardline_core::event::decode_txn(
            &data,
            shardline_fuzz::ARRIVAL_MS,
            &shardline_core::DecodeLimits::default(),
        );
        assert!(r.is_ok(), "{}: {r:?}", path.display());
    }
}
