//! A Redis server of a test's own: Debian's `redis-server` on a free loopback port, without
//! persistence, stopped when dropped. `tests/run` installs it when missing.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl RedisServer {
    /// Start one and wait until it answers.
    ///
    /// # Panics
    /// When `redis-server` is not installed or does not start: the test cannot run without it.
    pub fn start() -> RedisServer {
        // A free port: the kernel's pick, let go just before the server takes it.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        RedisServer::start_on(port)
    }

    /// [`RedisServer::start`] on `port` (a Redis that comes back where it was).
    pub fn start_on(port: u16) -> RedisServer {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let dir = std::env::temp_dir().join(format!("miclink-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a directory for redis");
        let child = Command::new(&bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {bin} ({e}): the cluster tests need Redis; \
                     run `apt-get install redis-server` (tests/run does) or set REDIS_SERVER"
                )
            });
        let server = RedisServer { child, port, dir };
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            assert!(Instant::now() < end, "{bin} did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
