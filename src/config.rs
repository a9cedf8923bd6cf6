//! Configuration: command-line flags, `MICLINK_*` variables and an optional TOML file, merged in
//! that order of precedence over embedded defaults and checked before anything uses them.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use miclink_cluster::ClusterConfig;
use miclink_protocol::IceServer;
use miclink_seats::SeatsConfig;
use miclink_sfu::SfuConfig;
use miclink_signaling::SignalingConfig;
use miclink_signaling::turn::TurnSecret;
use serde::Deserialize;

/// The media port when none is configured.
pub const DEFAULT_MEDIA_PORT: u16 = 7882;

/// miclink: a live-streaming server for audience mic link (co-host) rooms.
///
/// Runs with no configuration at all: the demo is then at http://127.0.0.1:8080 and join tokens
/// are not checked. Every flag also reads a MICLINK_* environment variable and a key of the
/// same name in the --config file.
#[derive(Debug, Default, Parser)]
#[command(name = "miclink", version, about)]
pub struct Args {
    /// Without a command: run the server.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML configuration file (keys as the flags, with underscores).
    #[arg(long, env = "MICLINK_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address of the HTTP and WebSocket listener [default: 127.0.0.1:8080].
    #[arg(long, env = "MICLINK_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// HS256 secret that signs join tokens. Unset: joins need no token (demo mode).
    #[arg(long, env = "MICLINK_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Seconds a member whose socket dropped keeps their seat and requests [default: 15].
    #[arg(long, env = "MICLINK_RESUME_GRACE_S")]
    pub resume_grace_s: Option<u64>,
    /// Seats per room, counting the anchor's seat 0 [default: 10, at most 10].
    #[arg(long, env = "MICLINK_MAX_SEATS")]
    pub max_seats: Option<u32>,
    /// Seconds between keepalive pings; a socket silent for three is dropped [default: 20].
    #[arg(long, env = "MICLINK_KEEPALIVE_S")]
    pub keepalive_s: Option<u64>,
    /// Address of the media port (UDP, and TCP on the same port number) [default: port 7882,
    /// serving this machine only: bound on every address, advertising loopback and the
    /// host's own addresses, dropping what comes from other machines].
    #[arg(long, env = "MICLINK_MEDIA_ADDR")]
    pub media_addr: Option<SocketAddr>,
    /// Address clients reach the media port at, repeatable [default: the media address's IP; for
    /// a wildcard such as 0.0.0.0, 127.0.0.1 and every interface address].
    #[arg(
        long = "media-public-ip",
        env = "MICLINK_MEDIA_PUBLIC_IPS",
        value_delimiter = ','
    )]
    pub media_public_ips: Vec<IpAddr>,
    /// ICE-TCP on the media port's number too, for clients whose network blocks UDP
    /// [default: true].
    #[arg(long, env = "MICLINK_MEDIA_TCP", action = clap::ArgAction::Set)]
    pub media_tcp: Option<bool>,
    /// Media event-loop threads sharing the media port [default: 0 = one per core].
    #[arg(long, env = "MICLINK_MEDIA_LOOPS")]
    pub media_loops: Option<usize>,
    /// STUN/TURN URL handed to clients, repeatable (credentials: use the config file).
    #[arg(
        long = "ice-server",
        env = "MICLINK_ICE_SERVERS",
        value_delimiter = ','
    )]
    pub ice_servers: Vec<String>,
    /// Secret shared with the TURN server (coturn's `static-auth-secret` with `use-auth-secret`):
    /// each member gets its own time-limited credentials for every `turn:`/`turns:` ICE server
    /// configured without credentials.
    #[arg(long, env = "MICLINK_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// Seconds the TURN credentials in a join (or resume) reply stay valid for starting a relay
    /// [default: 3600]; a relay started in time lasts as long as the session (coturn checks
    /// them when an allocation is made), so a short life bounds what a removed member keeps.
    #[arg(long, env = "MICLINK_TURN_TTL_S")]
    pub turn_ttl_s: Option<u64>,
    /// Print peer addresses as "[redacted]" in logs.
    #[arg(long, env = "MICLINK_SCRUB_LOGS")]
    pub scrub_logs: bool,
    /// Serve a non-loopback HTTP address without a JWT secret: anyone may join any room.
    #[arg(long, env = "MICLINK_OPEN_DEMO")]
    pub open_demo: bool,
    /// Bearer token that unlocks per-connection series (with room and user ids) on /metrics.
    /// Unset: /metrics shows totals only.
    #[arg(long, env = "MICLINK_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Open HTTP and WebSocket connections in all [default: 32768, lowered to fit the open file
    /// limit].
    #[arg(long, env = "MICLINK_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open connections from one client address, loopback excepted; 0 = no cap [default: 256].
    #[arg(long, env = "MICLINK_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Another signaling server (ws:// or wss:// URL) the demo page may be pointed at with
    /// `?server=`, repeatable [default: none: the page connects only to this server].
    #[arg(
        long = "demo-server",
        env = "MICLINK_DEMO_SERVERS",
        value_delimiter = ','
    )]
    pub demo_servers: Vec<String>,
    /// WHIP and WHEP sessions one client address may hold at once, loopback excepted;
    /// 0 = no cap (behind a load balancer on another host, where every client has its address)
    /// [default: 64].
    #[arg(long, env = "MICLINK_MAX_HTTP_MEDIA_PER_IP")]
    pub max_http_media_per_ip: Option<usize>,
    /// WHEP viewers one room may have at once [default: 500].
    #[arg(long, env = "MICLINK_MAX_WHEP_PER_ROOM")]
    pub max_whep_per_room: Option<usize>,
    /// Redis that coordinates a cluster of nodes (redis://[user:password@]host:port/db, or
    /// rediss:// for TLS). Unset: this node alone.
    #[arg(long, env = "MICLINK_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// PEM file of the CA a rediss:// server's certificate must chain to [default: the
    /// system's roots].
    #[arg(long, env = "MICLINK_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
    /// Secret shared by every node of the cluster (at least 16 bytes): it signs what each node
    /// writes to Redis, so nobody else can speak for one. Required unless Redis is on this
    /// machine.
    #[arg(long, env = "MICLINK_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// This node's name in the cluster: letters, digits, '-' and '_' [default: node-<random>].
    #[arg(long, env = "MICLINK_NODE_ID")]
    pub node_id: Option<String>,
    /// The URL clients reach this node's HTTP listener at, told to the cluster
    /// [default: http://<http_addr>].
    #[arg(long, env = "MICLINK_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// URL the rooms' milestones are POSTed to (webhooks), repeatable; needs --webhook-secret.
    #[arg(
        long = "webhook-url",
        env = "MICLINK_WEBHOOK_URLS",
        value_delimiter = ','
    )]
    pub webhook_urls: Vec<String>,
    /// Secret that signs every webhook (`Miclink-Signature`), at least 16 bytes.
    #[arg(long, env = "MICLINK_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
}

/// An operator's tools, beside running the server. They read the same configuration.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print a token signed with the configured jwt_secret: a join token for a room, or an
    /// admin token for the server API (`--role admin`, no room).
    Token {
        /// The room a join token is for (not for an admin token).
        #[arg(long)]
        room: Option<String>,
        /// The user (`sub`): who joins, or who calls the API (in its logs).
        #[arg(long)]
        user: String,
        /// anchor, audience or admin.
        #[arg(long, value_parser = ["anchor", "audience", "admin"])]
        role: String,
        /// Seconds the token is valid for.
        #[arg(long, default_value_t = 3600)]
        ttl_s: u64,
    },
    /// List the live rooms of a running server through its API (`GET /api/v1/rooms`), with an
    /// admin token made from the configured jwt_secret when one is set.
    Rooms {
        /// The server [default: http://<http_addr>].
        #[arg(long)]
        url: Option<String>,
    },
}

/// The TOML file: the same keys as the flags; `ice_servers` may carry credentials.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    http_addr: Option<SocketAddr>,
    jwt_secret: Option<String>,
    resume_grace_s: Option<u64>,
    max_seats: Option<u32>,
    keepalive_s: Option<u64>,
    ice_servers: Option<Vec<IceServer>>,
    turn_secret: Option<String>,
    turn_ttl_s: Option<u64>,
    media_addr: Option<SocketAddr>,
    media_public_ips: Option<Vec<IpAddr>>,
    media_tcp: Option<bool>,
    media_loops: Option<usize>,
    scrub_logs: Option<bool>,
    open_demo: Option<bool>,
    metrics_token: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    max_http_media_per_ip: Option<usize>,
    max_whep_per_room: Option<usize>,
    demo_servers: Option<Vec<String>>,
    redis_url: Option<String>,
    redis_ca: Option<PathBuf>,
    cluster_secret: Option<String>,
    node_id: Option<String>,
    public_url: Option<String>,
    webhook_urls: Option<Vec<String>>,
    webhook_secret: Option<String>,
}

/// The checked configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub signaling: SignalingConfig,
    /// The media plane; `None` runs signaling alone (media requests answer `not_implemented`).
    pub media: Option<SfuConfig>,
    /// How long the server keeps answering `/healthz` with 503 after a media loop died, so load
    /// balancers see it, before it exits non-zero for its supervisor to restart it.
    pub failure_exit_delay: Duration,
    pub scrub_logs: bool,
    /// Caps and timeouts of the HTTP listener.
    pub http: HttpLimits,
    /// Bearer token for the per-connection series of `/metrics`; `None`: totals only.
    pub metrics_token: Option<String>,
    /// This node in a cluster; `None`: alone.
    pub cluster: Option<ClusterConfig>,
    /// Signaling servers besides this one that the demo page may connect to.
    pub demo_servers: Vec<String>,
}

/// What one client may hold of the HTTP listener. WebSockets count for as long as they live.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// 0 = no cap. Loopback clients are not counted per address unless `per_ip_on_loopback`:
    /// there the peer is a local proxy or tool speaking for many users.
    pub max_connections_per_ip: usize,
    pub per_ip_on_loopback: bool,
    /// A connection that has not sent a whole request head this long after it opened (or after
    /// its last request) is closed.
    pub header_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 32_768,
            max_connections_per_ip: 256,
            per_ip_on_loopback: false,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            signaling: SignalingConfig::default(),
            media: Some(SfuConfig::default()),
            failure_exit_delay: Duration::from_secs(5),
            scrub_logs: false,
            http: HttpLimits::default(),
            metrics_token: None,
            cluster: None,
            demo_servers: Vec::new(),
        }
    }
}

impl Config {
    /// Merge flags, environment and file over the defaults, and check the result.
    pub fn load(args: Args) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("parsing {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let defaults = Config::default();
        let seats_defaults = SeatsConfig::default();

        let max_seats = args
            .max_seats
            .or(file.max_seats)
            .unwrap_or(seats_defaults.max_seats);
        if !(2..=10).contains(&max_seats) {
            bail!("max_seats must be 2 to 10 (the anchor's seat and 1 to 9 audience seats)");
        }
        let grace = args
            .resume_grace_s
            .or(file.resume_grace_s)
            .map_or(seats_defaults.resume_grace, Duration::from_secs);
        if grace > Duration::from_secs(3600) {
            bail!("resume_grace_s must be at most 3600");
        }
        let keepalive = args
            .keepalive_s
            .or(file.keepalive_s)
            .map_or(defaults.signaling.keepalive, Duration::from_secs);
        if keepalive.is_zero() {
            bail!("keepalive_s must be at least 1");
        }
        let jwt_secret = args.jwt_secret.or(file.jwt_secret);
        if let Some(secret) = &jwt_secret
            && secret.len() < 16
        {
            bail!("jwt_secret must be at least 16 bytes; a short HS256 secret can be guessed");
        }
        let ice_servers = if args.ice_servers.is_empty() {
            file.ice_servers.unwrap_or_default()
        } else {
            vec![IceServer {
                urls: args.ice_servers,
                username: None,
                credential: None,
            }]
        };
        for server in &ice_servers {
            for url in &server.urls {
                if !["stun:", "stuns:", "turn:", "turns:"]
                    .iter()
                    .any(|p| url.starts_with(p))
                {
                    bail!("ice server URL {url:?} must start with stun:, stuns:, turn: or turns:");
                }
            }
        }
        let turn_secret = args.turn_secret.or(file.turn_secret);
        let turn_ttl = Duration::from_secs(args.turn_ttl_s.or(file.turn_ttl_s).unwrap_or(3_600));
        let turn = match turn_secret {
            None => None,
            Some(secret) => {
                if secret.len() < 16 {
                    bail!("turn_secret must be at least 16 bytes; a short secret can be guessed");
                }
                if !(Duration::from_secs(60)..=Duration::from_secs(7 * 86_400)).contains(&turn_ttl)
                {
                    bail!("turn_ttl_s must be 60 to 604800 (a week)");
                }
                if !ice_servers
                    .iter()
                    .any(miclink_signaling::turn::takes_credentials)
                {
                    bail!(
                        "turn_secret is set but no ice server has a turn: or turns: URL without \
                         credentials of its own to give them to"
                    );
                }
                Some(TurnSecret::new(secret, turn_ttl))
            }
        };
        // Unset: this machine only. The port is bound on every address and the host's own are
        // advertised, because Firefox never pairs with a loopback candidate; datagrams from any
        // other machine are dropped, so nothing is served beyond what loopback would serve.
        let configured_media = args.media_addr.or(file.media_addr);
        let media_addr = configured_media
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_MEDIA_PORT)));
        // Empty: the media plane advertises the bound address, or every interface for a wildcard.
        let public_ips = if args.media_public_ips.is_empty() {
            file.media_public_ips.unwrap_or_default()
        } else {
            args.media_public_ips
        };
        if public_ips.iter().any(IpAddr::is_unspecified) {
            bail!("media_public_ips must be addresses clients can reach, not a wildcard");
        }
        let http_addr = args
            .http_addr
            .or(file.http_addr)
            .unwrap_or(defaults.http_addr);
        let open_demo = args.open_demo || file.open_demo.unwrap_or(false);
        if jwt_secret.is_none() && !http_addr.ip().is_loopback() && !open_demo {
            bail!(
                "http_addr {http_addr} is reachable from other machines but no jwt_secret is set, \
                 so anyone could join any room; set jwt_secret, or open_demo = true (--open-demo) \
                 if that is what you want"
            );
        }
        let metrics_token = args.metrics_token.or(file.metrics_token);
        if let Some(token) = &metrics_token
            && (token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            bail!(
                "metrics_token must be at least 16 printable ASCII characters (it is sent in a header)"
            );
        }
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(defaults.http.max_connections);
        if max_connections == 0 {
            bail!("max_connections must be at least 1");
        }
        let demo_servers = if args.demo_servers.is_empty() {
            file.demo_servers.unwrap_or_default()
        } else {
            args.demo_servers
        };
        for url in &demo_servers {
            let ok = (url.starts_with("ws://") || url.starts_with("wss://"))
                && url
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b";,'\"".contains(&b));
            if !ok {
                bail!("demo_servers entry {url:?} must be a ws:// or wss:// URL");
            }
        }
        let whep_per_room = args
            .max_whep_per_room
            .or(file.max_whep_per_room)
            .unwrap_or(defaults.signaling.whep_per_room);
        if whep_per_room == 0 {
            bail!("max_whep_per_room must be at least 1");
        }
        let webhook_urls = if args.webhook_urls.is_empty() {
            file.webhook_urls.unwrap_or_default()
        } else {
            args.webhook_urls
        };
        let webhook_secret = args.webhook_secret.or(file.webhook_secret);
        let webhooks = match (webhook_urls.is_empty(), webhook_secret) {
            (true, None) => None,
            (true, Some(_)) => bail!("webhook_secret is set but no webhook_url"),
            (false, None) => bail!(
                "webhook_url is set but no webhook_secret: receivers check each event's signature \
                 with it; set one of at least 16 bytes"
            ),
            (false, Some(secret)) => {
                if secret.len() < 16 {
                    bail!(
                        "webhook_secret must be at least 16 bytes; a short secret can be guessed"
                    );
                }
                for url in &webhook_urls {
                    // Read whole now: a URL that does not parse would be retried for nothing.
                    let ok = reqwest::Url::parse(url).is_ok_and(|u| {
                        matches!(u.scheme(), "http" | "https") && u.host_str().is_some()
                    });
                    if !ok {
                        bail!("webhook_url {url:?} must be an http:// or https:// URL");
                    }
                }
                Some(miclink_signaling::webhook::WebhookConfig::new(
                    webhook_urls,
                    secret,
                ))
            }
        };
        let cluster = match args.redis_url.or(file.redis_url) {
            None => None,
            Some(url) => {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    bail!("redis_url must be a redis:// or rediss:// (TLS) URL");
                }
                let local = miclink_cluster::redis_is_local(&url)
                    .map_err(|e| anyhow::anyhow!("redis_url: {e}"))?;
                let secret = args.cluster_secret.or(file.cluster_secret);
                match &secret {
                    Some(s) if s.len() < 16 => bail!(
                        "cluster_secret must be at least 16 bytes; a short secret can be guessed"
                    ),
                    None if !local => bail!(
                        "redis_url names another machine but no cluster_secret is set: anyone \
                         who can write to that Redis could speak for a node; set the same \
                         cluster_secret (at least 16 bytes) on every node"
                    ),
                    _ => {}
                }
                let redis_ca = args.redis_ca.or(file.redis_ca);
                if redis_ca.is_some() && !url.starts_with("rediss://") {
                    bail!("redis_ca is for a rediss:// (TLS) redis_url");
                }
                let node_id = args
                    .node_id
                    .or(file.node_id)
                    .unwrap_or_else(|| format!("node-{:08x}", rand_id()));
                if !miclink_cluster::valid_node_id(&node_id) {
                    bail!("node_id {node_id:?} must be 1 to 64 letters, digits, '-' or '_'");
                }
                let public_url = args
                    .public_url
                    .or(file.public_url)
                    .unwrap_or_else(|| format!("http://{http_addr}"));
                if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
                    bail!("public_url must be an http:// or https:// URL");
                }
                let mut cluster = ClusterConfig::new(&url, &node_id, &public_url);
                cluster.secret = secret;
                cluster.redis_ca = redis_ca;
                // Where other nodes reach this one's media port: its public addresses, or the
                // bound one when it is not a wildcard.
                cluster.media = if public_ips.is_empty() {
                    Some(media_addr)
                        .filter(|a| !a.ip().is_unspecified())
                        .into_iter()
                        .collect()
                } else {
                    public_ips
                        .iter()
                        .map(|ip| SocketAddr::new(*ip, media_addr.port()))
                        .collect()
                };
                Some(cluster)
            }
        };
        Ok(Config {
            http_addr,
            signaling: SignalingConfig {
                seats: SeatsConfig {
                    max_seats,
                    resume_grace: grace,
                    ..seats_defaults
                },
                jwt_secret,
                ice_servers,
                turn,
                keepalive,
                http_media_per_ip: args
                    .max_http_media_per_ip
                    .or(file.max_http_media_per_ip)
                    .unwrap_or(defaults.signaling.http_media_per_ip),
                whep_per_room,
                webhooks,
                ..defaults.signaling
            },
            media: Some(SfuConfig {
                udp_addr: media_addr,
                public_ips,
                local_only: configured_media.is_none(),
                tcp: args.media_tcp.or(file.media_tcp).unwrap_or(true),
                loops: args.media_loops.or(file.media_loops).unwrap_or(0),
                ..SfuConfig::default()
            }),
            failure_exit_delay: defaults.failure_exit_delay,
            scrub_logs: args.scrub_logs || file.scrub_logs.unwrap_or(false),
            http: HttpLimits {
                max_connections,
                max_connections_per_ip: args
                    .max_connections_per_ip
                    .or(file.max_connections_per_ip)
                    .unwrap_or(defaults.http.max_connections_per_ip),
                ..defaults.http
            },
            metrics_token,
            cluster,
            demo_servers,
        })
    }
}

/// A node id's random part: the process id mixed with the clock, distinct enough between
/// nodes started together.
fn rand_id() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ std::process::id().rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Config> {
        Config::load(Args::try_parse_from(
            std::iter::once("miclink").chain(args.iter().copied()),
        )?)
    }

    #[test]
    fn no_configuration_gives_the_demo_defaults() {
        let c = parse(&[]).expect("defaults are valid");
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.signaling.seats.max_seats, 10);
        assert_eq!(c.signaling.seats.resume_grace, Duration::from_secs(15));
        assert!(c.signaling.jwt_secret.is_none());
        // This machine only, but on every address so Firefox finds a non-loopback pair.
        let media = c.media.expect("media plane");
        assert_eq!(media.udp_addr.to_string(), "0.0.0.0:7882");
        assert!(media.local_only);
        assert!(media.tcp, "ICE-TCP is on by default");
        assert!(media.public_ips.is_empty());
        // A configured media address serves whoever reaches it.
        let c = parse(&["--media-addr", "127.0.0.1:9882"]).expect("valid");
        let media = c.media.expect("media plane");
        assert_eq!(media.udp_addr.to_string(), "127.0.0.1:9882");
        assert!(!media.local_only);
        let c = parse(&["--media-tcp", "false"]).expect("valid");
        assert!(!c.media.expect("media plane").tcp);
        assert!(c.cluster.is_none(), "alone without a Redis URL");
        let c =
            parse(&["--redis-url", "redis://127.0.0.1:6379/", "--node-id", "a-1"]).expect("valid");
        let cluster = c.cluster.expect("a cluster node");
        assert_eq!(cluster.node_id, "a-1");
        assert_eq!(cluster.http_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("miclink-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("miclink.toml");
        std::fs::write(
            &path,
            r#"
http_addr = "0.0.0.0:9000"
jwt_secret = "0123456789abcdef0123"
max_seats = 5
[[ice_servers]]
urls = ["turn:turn.example.com:3478"]
username = "u"
credential = "p"
"#,
        )
        .expect("write config");
        let c = parse(&[
            "--config",
            path.to_str().expect("utf-8"),
            "--max-seats",
            "7",
        ])
        .expect("valid");
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:9000");
        assert_eq!(c.signaling.seats.max_seats, 7);
        assert_eq!(c.signaling.ice_servers[0].username.as_deref(), Some("u"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        for (args, needle) in [
            (&["--max-seats", "11"][..], "max_seats"),
            (&["--jwt-secret", "short"][..], "jwt_secret"),
            (&["--ice-server", "http://x"][..], "ice server"),
            (&["--keepalive-s", "0"][..], "keepalive"),
            (&["--media-public-ip", "0.0.0.0"][..], "media_public_ips"),
            (&["--metrics-token", "short"][..], "metrics_token"),
            (&["--max-connections", "0"][..], "max_connections"),
            (&["--redis-url", "http://x"][..], "redis_url"),
            (&["--demo-server", "https://x/ws"][..], "demo_servers"),
            (
                &["--demo-server", "wss://x/ws; script-src *"][..],
                "demo_servers",
            ),
            (
                &["--redis-url", "redis://127.0.0.1/", "--node-id", "a:b"][..],
                "node_id",
            ),
            (
                &["--redis-url", "redis://127.0.0.1/", "--public-url", "x"][..],
                "public_url",
            ),
            (
                &["--redis-url", "redis://10.0.0.5:6379/"][..],
                "cluster_secret",
            ),
            (
                &[
                    "--redis-url",
                    "redis://10.0.0.5:6379/",
                    "--cluster-secret",
                    "short",
                ][..],
                "cluster_secret",
            ),
            (
                &["--redis-url", "redis://127.0.0.1/", "--redis-ca", "/ca.pem"][..],
                "rediss://",
            ),
            (&["--turn-secret", "0123456789abcdef"][..], "no ice server"),
            (
                &["--ice-server", "turn:t:3478", "--turn-secret", "short"][..],
                "turn_secret",
            ),
            (
                &[
                    "--ice-server",
                    "turn:t:3478",
                    "--turn-secret",
                    "0123456789abcdef",
                    "--turn-ttl-s",
                    "5",
                ][..],
                "turn_ttl_s",
            ),
            (
                &[
                    "--ice-server",
                    "turn:t:3478",
                    "--turn-secret",
                    "0123456789abcdef",
                    "--turn-ttl-s",
                    "99999999999999",
                ][..],
                "turn_ttl_s",
            ),
        ] {
            let err = parse(args).expect_err("refused").to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn a_public_address_without_a_secret_is_refused_unless_it_is_an_open_demo() {
        let err = parse(&["--http-addr", "0.0.0.0:8080"]).expect_err("refused");
        assert!(err.to_string().contains("open_demo"), "{err}");
        parse(&["--http-addr", "0.0.0.0:8080", "--open-demo"]).expect("an explicit open demo");
        parse(&[
            "--http-addr",
            "0.0.0.0:8080",
            "--jwt-secret",
            "0123456789abcdef",
        ])
        .expect("with a secret");
        parse(&["--http-addr", "[::1]:8080"]).expect("loopback needs neither");
    }

    #[test]
    fn a_cluster_beyond_this_machine_needs_a_secret_and_may_use_tls() {
        let c = parse(&[
            "--redis-url",
            "rediss://miclink:pw@redis.example:6380/",
            "--redis-ca",
            "/etc/miclink/redis-ca.pem",
            "--cluster-secret",
            "0123456789abcdef",
        ])
        .expect("valid");
        let cluster = c.cluster.expect("a cluster node");
        assert_eq!(cluster.secret.as_deref(), Some("0123456789abcdef"));
        assert_eq!(
            cluster.redis_ca.as_deref(),
            Some(std::path::Path::new("/etc/miclink/redis-ca.pem"))
        );
        // The secret never reaches a log line through the configuration's Debug.
        assert!(!format!("{cluster:?}").contains("0123456789abcdef"));
        assert!(!format!("{cluster:?}").contains("pw@"));
        let c = parse(&["--redis-url", "redis://[::1]:6379/"]).expect("loopback needs none");
        assert!(c.cluster.expect("a cluster node").secret.is_none());
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let path = std::env::temp_dir().join(format!("miclink-bad-{}.toml", std::process::id()));
        std::fs::write(&path, "max_seat = 5\n").expect("write");
        let err = parse(&["--config", path.to_str().expect("utf-8")]).expect_err("typo refused");
        assert!(format!("{err:#}").contains("max_seat"), "{err:#}");
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn webhooks_need_a_secret_and_urls_that_parse() {
        let url = "http://127.0.0.1:9000/hooks";
        let secret = "webhook-secret-0123";
        let c = parse(&["--webhook-url", url, "--webhook-secret", secret]).expect("valid");
        let hooks = c.signaling.webhooks.expect("webhooks on");
        assert_eq!(hooks.urls, [url]);
        // The secret never shows in the configuration's Debug (logs).
        assert!(!format!("{hooks:?}").contains(secret));
        assert!(parse(&["--webhook-url", url]).is_err(), "no secret");
        assert!(parse(&["--webhook-url", url, "--webhook-secret", "short"]).is_err());
        assert!(parse(&["--webhook-secret", secret]).is_err(), "no URL");
        for bad in ["ftp://x/y", "http://", "not a url", "http://exa mple.org/"] {
            let r = parse(&["--webhook-url", bad, "--webhook-secret", secret]);
            assert!(r.is_err(), "{bad}");
        }
        assert!(parse(&[]).expect("defaults").signaling.webhooks.is_none());
    }
}
