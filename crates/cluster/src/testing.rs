//! A Redis server of a test's own: Debian's `redis-server` on a free loopback port, without
//! persistence, stopped when dropped. `tests/run` installs it when missing.
//!
//! It runs as a deployment should (`deploy/cluster.md`): the default user is off, and the
//! nodes' user, with a password, may reach only the cluster's keys and channels (`miclink:*`)
//! and no dangerous command. Optionally it speaks TLS only.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nodes' Redis user and its password.
pub const USER: &str = "miclink";
pub const PASSWORD: &str = "test-password-0123";

pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    tls: bool,
}

/// A certificate and key (PEM files) for a TLS Redis, and the CA that signed them.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl RedisServer {
    /// Start one and wait until it answers.
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not start: the test cannot run without it.
    pub fn start() -> RedisServer {
        RedisServer::start_on(free_port())
    }

    /// [`RedisServer::start`] on `port` (a Redis that comes back where it was).
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::spawn(port, None)
    }

    /// [`RedisServer::start`] speaking TLS only (`rediss://`), with `tls`'s certificate.
    pub fn start_tls(tls: &TlsFiles) -> RedisServer {
        RedisServer::spawn(free_port(), Some(tls))
    }

    fn spawn(port: u16, tls: Option<&TlsFiles>) -> RedisServer {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let dir = std::env::temp_dir().join(format!("miclink-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for redis");
        let mut cmd = Command::new(&bin);
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        match tls {
            None => {
                cmd.args(["--port", &port.to_string()]);
            }
            Some(t) => {
                cmd.args(["--port", "0", "--tls-port", &port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&t.cert)
                    .arg("--tls-key-file")
                    .arg(&t.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&t.ca)
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        cmd.args(["--user", "default", "off", "--user", USER, "on"])
            .arg(format!(">{PASSWORD}"))
            .args(["~miclink:*", "&miclink:*", "+@all", "-@dangerous", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {bin} ({e}): the cluster tests need Redis; \
                 run `apt-get install redis-server` (tests/run does) or set REDIS_SERVER"
            )
        });
        let server = RedisServer {
            child,
            port,
            dir,
            tls: tls.is_some(),
        };
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            assert!(Instant::now() < end, "{bin} did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL the nodes use: their user and password, `rediss://` when it speaks TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://{USER}:{PASSWORD}@127.0.0.1:{}/", self.port)
    }

    /// The URL without credentials: what a client that does not know the password has.
    pub fn anonymous_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn free_port() -> u16 {
    // The kernel's pick, let go just before the server takes it.
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
