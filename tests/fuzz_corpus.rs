//! Runs the cargo-fuzz corpus of `replay_decode` through the same entry function on the stable
//! toolchain, so every CI run exercises what the fuzzer found.

use std::path::Path;

#[test]
fn replay_decode_corpus_never_panics_and_round_trips() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/replay_decode");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus directory exists") {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        aether::codec::fuzz_replay_decode(&bytes);
        count += 1;
    }
    assert!(
        count >= 10,
        "expected the seed corpus, found {count} files in {}",
        dir.display()
    );
}

#[test]
fn corpus_holds_both_valid_and_damaged_records() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/replay_decode");
    let (mut ok, mut bad) = (0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        match aether::codec::decode_commit(&bytes) {
            Ok(_) => ok += 1,
            Err(_) => bad += 1,
        }
    }
    assert!(ok >= 1 && bad >= 5, "valid: {ok}, damaged: {bad}");
}
