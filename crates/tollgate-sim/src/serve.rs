//! Serving one simulator's router on loopback, shared by the Telegram and Chat
//! simulators.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A router served on `127.0.0.1` in a spawned task. Dropping it stops the server
/// abruptly; [`Serving::shutdown`] stops it gracefully.
#[derive(Debug)]
pub(crate) struct Serving {
    pub(crate) addr: SocketAddr,
    pub(crate) base_url: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl Serving {
    /// How long [`Serving::shutdown`] waits for open connections to finish.
    const GRACE: Duration = Duration::from_secs(1);

    /// Binds `127.0.0.1:0` and serves `app`. Must be called within a Tokio runtime.
    pub(crate) async fn start(app: Router) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
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
            base_url: format!("http://{addr}"),
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops accepting connections and lets open ones finish (for up to a second,
    /// then aborts them).
    pub(crate) async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(Self::GRACE, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
