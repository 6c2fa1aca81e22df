//! A simulator serving on loopback: the one handle every simulator's `start` returns.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A simulator that can be served: [`GraphSim`](crate::GraphSim),
/// [`TelegramSim`](crate::TelegramSim) and [`ChatSim`](crate::ChatSim). Its `start`
/// returns a [`Running<Self>`](Running).
///
/// This trait is sealed: it is implemented by the simulators of this crate only.
pub trait Simulator: sealed::Serve {
    /// The snapshot of what the server saw.
    type Stats;
}

pub(crate) mod sealed {
    use std::sync::Arc;

    use axum::Router;

    /// What [`Running`](super::Running) needs from a simulator, kept out of the public
    /// API.
    pub trait Serve {
        /// The name of the handle in `Debug` output.
        const NAME: &'static str;
        /// The state shared by the handlers and the handle.
        ///
        /// Rust wants it declared `pub` since it appears here; each simulator declares
        /// it so in its private `server` module, which keeps it out of reach.
        type Shared: Send + Sync + 'static;
        /// The routes, handlers bound to `shared`.
        fn router(shared: Arc<Self::Shared>) -> Router;
        /// The statistics so far.
        fn stats(shared: &Self::Shared) -> <Self as super::Simulator>::Stats
        where
            Self: super::Simulator;
    }
}

/// A simulator serving on `127.0.0.1` in a spawned task. Dropping it stops the server
/// abruptly; [`Running::shutdown`] stops it gracefully and returns the final
/// statistics.
///
/// Besides what every simulator has here, each adds the URLs of its own endpoints
/// (see the `impl` blocks for [`GraphSim`](crate::GraphSim),
/// [`TelegramSim`](crate::TelegramSim) and [`ChatSim`](crate::ChatSim)).
pub struct Running<S: Simulator> {
    addr: SocketAddr,
    base_url: String,
    shared: Arc<S::Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl<S: Simulator> fmt::Debug for Running<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(S::NAME)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl<S: Simulator> Running<S> {
    /// How long [`Running::shutdown`] waits for open connections to finish.
    const GRACE: Duration = Duration::from_secs(1);

    /// Binds `127.0.0.1:0`, makes the shared state (`shared` is given the base URL)
    /// and serves the simulator's router in a spawned task. Must be called within a
    /// Tokio runtime.
    pub(crate) async fn start(shared: impl FnOnce(&str) -> S::Shared) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        let shared = Arc::new(shared(&base_url));
        let app = S::router(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self {
            addr,
            base_url,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The state shared with the handlers.
    pub(crate) fn shared(&self) -> &S::Shared {
        &self.shared
    }

    /// The bound address (`127.0.0.1` and an ephemeral port).
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`, without a trailing slash.
    #[must_use]
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// A snapshot of what the server has seen so far.
    #[must_use]
    pub fn stats(&self) -> S::Stats {
        S::stats(&self.shared)
    }

    /// Stops accepting connections, lets open ones finish (for up to a second, then
    /// aborts them) and returns the final statistics.
    pub async fn shutdown(mut self) -> S::Stats {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(Self::GRACE, &mut task).await.is_err() {
                task.abort();
            }
        }
        S::stats(&self.shared)
    }
}

impl<S: Simulator> Drop for Running<S> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
