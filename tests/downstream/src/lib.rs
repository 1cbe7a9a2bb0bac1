//! Uses aether as an application would; with feature `probe`, reaches for the simulation hooks,
//! which must not exist for it.

/// The public API is there.
pub fn public_api_is_visible() -> aether::MemoryBroker {
    aether::MemoryBroker::new()
}

/// Every line must fail to compile for a default-features dependent.
#[cfg(feature = "probe")]
pub mod probe {
    use aether::broker::{BrokerState, Now};
    use aether::planted::PlantedBugs;

    pub fn hooks<B: aether::Broker, C: aether::Clock>(rt: aether::Runtime<B, C>) {
        let _ = aether::cluster::Cluster::<B, C>::start_with_observer;
        let _ = rt.with_planted_bugs(PlantedBugs::default());
        let _: Option<(BrokerState, Now)> = None;
    }
}
