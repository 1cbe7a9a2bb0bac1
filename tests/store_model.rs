//! Property test: random interleavings of appends with random expected versions, checked against
//! a model (a map from actor to latest version). Contiguity and all-or-nothing must hold after
//! every step, and the store must agree with the model on success vs conflict.

use std::collections::BTreeMap;

use aether::{
    AppendError, EventStore, ExpectedVersion, MemoryBroker, NewEvent, Runtime, SharedRng,
    StoreConfig, SystemClock,
};
use proptest::prelude::*;
use serde_json::json;

#[derive(Clone, Debug)]
struct Op {
    actor: u8,
    writer: u8,
    expected: ExpectedVersion,
    count: usize,
}

fn op() -> impl Strategy<Value = Op> {
    let expected = prop_oneof![
        Just(ExpectedVersion::Any),
        Just(ExpectedVersion::NoStream),
        (0u64..6).prop_map(ExpectedVersion::Exact),
    ];
    (0u8..3, 0u8..2, expected, 0usize..4).prop_map(|(actor, writer, expected, count)| Op {
        actor,
        writer,
        expected,
        count,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn appends_match_the_model(ops in proptest::collection::vec(op(), 1..40), seed in any::<u64>()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let broker = MemoryBroker::new();
            let runtime = |s| Runtime::new(broker.clone(), SystemClock::new(), SharedRng::from_seed(s));
            // Two writers with separate hint caches, as two processes would have.
            let writers = [
                EventStore::open(runtime(seed), StoreConfig::new("model")).await.unwrap(),
                EventStore::open(runtime(seed ^ 1), StoreConfig::new("model")).await.unwrap(),
            ];
            let mut model: BTreeMap<u8, u64> = BTreeMap::new();
            for (i, op) in ops.iter().enumerate() {
                let actor = format!("actor-{}", op.actor);
                let current = model.get(&op.actor).copied().unwrap_or(0);
                let events: Vec<NewEvent> =
                    (0..op.count).map(|j| NewEvent::new("E", json!({"op": i, "j": j}))).collect();
                let result = writers[op.writer as usize].append(&actor, op.expected, events).await;
                match result {
                    Ok(outcome) => {
                        assert!(op.count > 0);
                        assert!(op.expected.matches(current), "{op:?} succeeded at {current}");
                        assert_eq!(outcome.first_version(), current + 1);
                        assert_eq!(outcome.last_version(), current + op.count as u64);
                        model.insert(op.actor, current + op.count as u64);
                    }
                    Err(AppendError::Empty) => assert_eq!(op.count, 0),
                    Err(AppendError::Conflict(c)) => {
                        assert!(op.count > 0);
                        assert!(!op.expected.matches(current), "{op:?} conflicted at {current}");
                        assert_eq!(c.actual, current);
                    }
                    Err(other) => panic!("unexpected {other:?}"),
                }
                for (a, v) in &model {
                    let events = writers[0].events(&format!("actor-{a}"), 1).await.unwrap();
                    let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
                    assert_eq!(versions, (1..=*v).collect::<Vec<_>>(), "contiguous from 1");
                }
            }
        });
    }
}
