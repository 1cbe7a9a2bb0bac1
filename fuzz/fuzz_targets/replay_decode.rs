//! Arbitrary bytes into the replay decoder: it must never panic, and whatever decodes must
//! round-trip. The body is `aether::codec::fuzz_replay_decode`, which `tests/fuzz_corpus.rs`
//! also runs over the corpus on the stable toolchain.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    aether::codec::fuzz_replay_decode(data);
});
