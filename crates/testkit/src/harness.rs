//! A service under test: built from its settings, running on port 0 in the
//! test's runtime, with the test's own bus and database handles on the same
//! namespace. Every service's tests start theirs through [`Harness`] (or,
//! for a service without a bus or database, [`Running`]).

use std::{net::SocketAddr, time::Duration};

use common::{
    bus::{Bus, BusConfig},
    server::Service,
};
use mongodb::Database;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::TestApp;

/// A built service, running: its HTTP side and the task that runs it.
pub struct Running {
    pub app: TestApp,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Runs `service` in the background until its [`TestApp`] is dropped or
    /// [`Running::stop`] is called.
    pub fn start(service: Service) -> Self {
        let port = service.port();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(service.run_until(shutdown.clone()));
        Self {
            app: TestApp::new(SocketAddr::from(([127, 0, 0, 1], port)), shutdown),
            task,
        }
    }

    /// Its HTTP side alone; the service runs on until that is dropped, and
    /// an error it stops with is printed.
    pub fn detach(self) -> TestApp {
        let task = self.task;
        tokio::spawn(async move {
            if let Ok(Err(err)) = task.await {
                eprintln!("testkit: service stopped with an error: {err:#}");
            }
        });
        self.app
    }

    /// Stops it as SIGTERM does and waits (30 s at most) until it has
    /// exited cleanly.
    pub async fn stop(self) {
        self.app.shutdown().cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the service did not stop within 30 s of its shutdown")
            .expect("the service panicked")
            .expect("the service stopped with an error");
    }
}

/// A running service plus the test's handles on its world.
pub struct Harness<S> {
    pub app: TestApp,
    /// A bus on the service's namespace: publish what other services would,
    /// read what this one published.
    pub bus: Bus,
    /// The service's database.
    pub db: Database,
    /// The settings it was started with (a restart passes them again).
    pub settings: S,
    task: JoinHandle<anyhow::Result<()>>,
}

impl<S: Clone> Harness<S> {
    /// Builds `service` from `settings` with `build`, runs it, and connects
    /// the test's bus (`bus`) and database (`mongo_uri`, the service's
    /// database `service`) — the namespace those settings name.
    pub async fn start<Fut>(
        service: &'static str,
        mongo_uri: &str,
        bus: &BusConfig,
        settings: S,
        build: impl FnOnce(S) -> Fut,
    ) -> Self
    where
        Fut: Future<Output = anyhow::Result<Service>>,
    {
        let built = build(settings.clone())
            .await
            .unwrap_or_else(|err| panic!("{service} failed to start: {err:#}"));
        let Running { app, task } = Running::start(built);
        let bus = Bus::connect(bus.clone().with_connection_name(format!("{service}-test")))
            .await
            .expect("the test's bus failed to connect");
        let db = common::mongo::connect(mongo_uri, service)
            .await
            .expect("bad MongoDB URI");
        Self {
            app,
            bus,
            db,
            settings,
            task,
        }
    }

    /// Stops the service and waits until it has exited cleanly.
    pub async fn stop(self) {
        Running {
            app: self.app,
            task: self.task,
        }
        .stop()
        .await
    }
}
