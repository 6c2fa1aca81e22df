//! A `redis-server` of the test's own, on a free loopback port.
//!
//! The binary comes from `PATH`. Without it the tests fail, saying how to install it,
//! unless `TOLLGATE_SKIP_REDIS_TESTS=1` is set (an explicit opt-out; CI never sets it):
//! then [`RedisServer::start`] returns `None` and the test returns early.
//!
//! [`RedisServer::start_cluster`] starts one in Redis Cluster mode instead: a cluster of
//! one node that owns all 16,384 hash slots. A plain connection reaches every key, and
//! the server still enforces what Cluster requires of each command and script: all the
//! keys it names in one hash slot (else `CROSSSLOT`).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tollgate_redis::{RedisStore, RedisStoreBuilder};

pub(crate) const SKIP_VAR: &str = "TOLLGATE_SKIP_REDIS_TESTS";

/// A running `redis-server`, killed when dropped.
pub(crate) struct RedisServer {
    binary: PathBuf,
    port: u16,
    child: Option<Child>,
    /// Cluster mode: the directory of the node's cluster configuration file.
    cluster_dir: Option<PathBuf>,
}

fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

impl RedisServer {
    /// Starts a server, or returns `None` when the tests are explicitly skipped.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not on `PATH` (and the tests are not skipped), or does
    /// not answer `PING` within 10 s.
    // Says so once per skipped test, so that a skipped run is visible in its output.
    #[allow(clippy::print_stderr)]
    pub(crate) async fn start() -> Option<RedisServer> {
        let Some(binary) = find_binary() else {
            if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
                eprintln!("redis-server not found; skipped because {SKIP_VAR}=1");
                return None;
            }
            panic!(
                "redis-server is not on PATH: these tests run against a real Redis. Install \
                 it (Debian/Ubuntu: `apt-get install -y redis-server`), or set \
                 {SKIP_VAR}=1 to skip them explicitly."
            );
        };
        let mut server = RedisServer {
            binary,
            port: free_port(),
            child: None,
            cluster_dir: None,
        };
        server.spawn().await;
        Some(server)
    }

    /// Starts a one-node Redis Cluster (see the module docs), or returns `None` when
    /// the tests are explicitly skipped.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start), and when the cluster does not report `ok` within 10 s.
    pub(crate) async fn start_cluster() -> Option<RedisServer> {
        let mut server = RedisServer::start().await?;
        server.kill().await;
        let dir = std::env::temp_dir().join(format!(
            "tollgate-redis-cluster-{}-{}",
            std::process::id(),
            server.port
        ));
        std::fs::create_dir_all(&dir).expect("create the cluster node's directory");
        server.cluster_dir = Some(dir);
        server.spawn().await;
        let mut connection = server.connection().await;
        // ADDSLOTS rather than ADDSLOTSRANGE (Redis 7): any Redis with Cluster takes it.
        let () = redis::cmd("CLUSTER")
            .arg("ADDSLOTS")
            .arg((0..16_384).collect::<Vec<u16>>())
            .query_async(&mut connection)
            .await
            .expect("CLUSTER ADDSLOTS");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut connection)
                .await
                .expect("CLUSTER INFO");
            if info.contains("cluster_state:ok") {
                return Some(server);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the one-node cluster did not become ok: {info}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's command line beyond its port.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command.args(["--port", &self.port.to_string()]).args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        if let Some(dir) = &self.cluster_dir {
            let conf = format!("nodes-{}.conf", self.port);
            command
                .args(["--cluster-enabled", "yes", "--cluster-config-file", &conf])
                .arg("--dir")
                .arg(dir);
        }
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn spawn(&mut self) {
        for attempt in 0..5 {
            let child = self.command().spawn().expect("start redis-server");
            self.child = Some(child);
            if self.wait_for_pong(Duration::from_secs(10)).await {
                return;
            }
            // The port may have been taken since it was picked: try another.
            self.kill().await;
            if attempt < 4 {
                self.port = free_port();
            }
        }
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    async fn wait_for_pong(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false; // exited: port in use, most likely
            }
            if ping(self.port).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// `redis://127.0.0.1:<port>/`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A connection of the test's own to the server (for commands the store does not
    /// send: `INFO`, writing foreign data, Cluster setup).
    pub(crate) async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("a valid URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test's redis-server")
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// A store builder on this server with short, test-friendly settings.
    pub(crate) fn builder(&self) -> RedisStoreBuilder {
        RedisStore::builder(self.url())
            .timeout(Duration::from_millis(500))
            .retry_interval(Duration::from_millis(200))
            .lease_ttl(Duration::from_secs(2))
            .global_cooldown_refresh(Duration::from_millis(50))
            .max_poll_interval(Duration::from_millis(10))
    }

    /// A store on this server.
    pub(crate) fn store(&self) -> RedisStore {
        self.builder().build().expect("a valid URL")
    }

    /// Kills the server (as a crash would: SIGKILL, no shutdown).
    pub(crate) async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub(crate) async fn freeze(&self) {
        self.signal("-STOP").await;
    }

    /// Thaws a frozen server (SIGCONT).
    pub(crate) async fn thaw(&self) {
        self.signal("-CONT").await;
    }

    async fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("a running server");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Starts the server again on the same port.
    pub(crate) async fn restart(&mut self) {
        self.kill().await;
        let child = self.command().spawn().expect("restart redis-server");
        self.child = Some(child);
        assert!(
            self.wait_for_pong(Duration::from_secs(10)).await,
            "redis-server did not come back on port {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        if let Some(dir) = &self.cluster_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Starts a server, or returns from the test when Redis tests are explicitly skipped.
#[macro_export]
macro_rules! redis_server {
    () => {
        match support::RedisServer::start().await {
            Some(server) => server,
            None => return,
        }
    };
    (cluster) => {
        match support::RedisServer::start_cluster().await {
            Some(server) => server,
            None => return,
        }
    };
}
