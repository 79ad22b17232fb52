//! An in-process broker on loopback port 0 for the CLI's integration tests.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A broker running in this test's runtime.
pub struct InProcessBroker {
    /// Its client gRPC address, `127.0.0.1:<port>`.
    pub addr: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<txpipe_broker::Result<()>>,
}

impl InProcessBroker {
    /// Starts a broker with `config` on three loopback listeners on port 0.
    pub async fn start(config: txpipe_broker::Config) -> Self {
        let bind = || tokio::net::TcpListener::bind("127.0.0.1:0");
        let listeners = txpipe_broker::Listeners {
            grpc: bind().await.unwrap(),
            peer: bind().await.unwrap(),
            admin: bind().await.unwrap(),
        };
        let addr = listeners.grpc.local_addr().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(txpipe_broker::run(config, listeners, async move {
            let _ = stopped.await;
        }));
        Self { addr, stop, task }
    }

    /// Shuts it down cleanly (within 30 s) and checks that it ran without an error.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the broker stops within 30 s")
            .unwrap()
            .unwrap();
    }
}
