//! The broker conformance suite (bodies in `tests/support/conformance.rs`) run against the
//! memory broker and, with feature `nats`, against a real nats-server started per test.

mod support;

macro_rules! conformance {
    ($($body:ident),* $(,)?) => {
        /// The embedded memory broker.
        mod memory {
            $(
                #[tokio::test]
                async fn $body() {
                    crate::support::conformance::$body(aether::MemoryBroker::new()).await;
                }
            )*
        }

        /// A real nats-server (single node), one per test.
        #[cfg(feature = "nats")]
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $body() {
                    let server = crate::support::nats_server::NatsServer::start();
                    let broker = server.broker().await;
                    crate::support::conformance::$body(broker).await;
                }
            )*
        }
    };
}

conformance_bodies!(conformance! {});
