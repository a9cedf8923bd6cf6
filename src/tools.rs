//! An operator's first tools: `miclink token` signs a token with the configured secret, and
//! `miclink rooms` lists a running server's live rooms through its API.

use anyhow::{Context, bail};
use miclink_protocol::Ident;
use miclink_protocol::api::{RoomList, TokenRole};
use miclink_signaling::sign_token;

use crate::{Command, Config};

/// Run one tool with the server's configuration; what it prints goes to stdout.
pub async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    let secret = config.signaling.jwt_secret.clone();
    match command {
        Command::Token {
            room,
            user,
            role,
            ttl_s,
        } => {
            let Some(secret) = secret else {
                bail!(
                    "no jwt_secret is configured (--jwt-secret, MICLINK_JWT_SECRET or the config \
                     file): this server checks no tokens"
                );
            };
            if !(1..=366 * 86_400).contains(&ttl_s) {
                bail!("--ttl-s must be 1 to 31622400 (a year)");
            }
            let role = match role.as_str() {
                "anchor" => TokenRole::Anchor,
                "audience" => TokenRole::Audience,
                _ => TokenRole::Admin,
            };
            let room = match (role, room) {
                (TokenRole::Admin, Some(_)) => bail!("an admin token names no room"),
                (TokenRole::Admin, None) => None,
                (_, None) => bail!("a join token needs --room"),
                (_, Some(r)) => Some(Ident::new(&r).context("--room")?),
            };
            Ident::new(&user).context("--user")?;
            println!("{}", sign_token(&secret, room.as_ref(), &user, role, ttl_s));
            Ok(())
        }
        Command::Rooms { url } => {
            let base = url.unwrap_or_else(|| format!("http://{}", config.http_addr));
            let url = format!("{}/api/v1/rooms", base.trim_end_matches('/'));
            let mut request = reqwest::Client::new().get(&url);
            if let Some(secret) = &secret {
                request =
                    request.bearer_auth(sign_token(secret, None, "cli", TokenRole::Admin, 60));
            }
            let response = request.send().await.with_context(|| format!("GET {url}"))?;
            let status = response.status();
            let body = response.text().await.context("reading the answer")?;
            if !status.is_success() {
                bail!("GET {url}: {status}: {body}");
            }
            let list: RoomList = serde_json::from_str(&body).context("reading the room list")?;
            print!("{}", table(&list, now_ms()));
            Ok(())
        }
    }
}

/// The live list as a table: one room a line.
fn table(list: &RoomList, now_ms: u64) -> String {
    let mut out = format!(
        "{:<24} {:<24} {:>8} {:>6} {:>9}  {}\n",
        "ROOM", "ANCHOR", "AUDIENCE", "LINKED", "LIVE", "METADATA"
    );
    for r in &list.rooms {
        let live_s = now_ms.saturating_sub(r.started_at) / 1000;
        let live = format!(
            "{}:{:02}:{:02}",
            live_s / 3600,
            live_s / 60 % 60,
            live_s % 60
        );
        let metadata: String = r
            .metadata
            .chars()
            .filter(|c| !c.is_control())
            .take(40)
            .collect();
        out.push_str(&format!(
            "{:<24} {:<24} {:>8} {:>6} {:>9}  {}\n",
            r.room.as_str(),
            r.anchor.user.as_str(),
            r.audience_count,
            r.linked.len(),
            live,
            metadata
        ));
    }
    if list.rooms.is_empty() {
        out.push_str("(no live rooms)\n");
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
