//! `miclink-load` against a real server in this process: the numbers it reports must come from
//! packets that arrived. A short `cohost` run (anchor and nine guests admitted through
//! apply/accept, two viewers) over real WebRTC on loopback; and `encode`, the WHIP encoder.

use std::process::Command;

use miclink::{Args, Config};
use tokio::sync::oneshot;

/// A server on its embedded defaults, on ports of the OS's choosing, until the sender is used.
async fn server() -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = Config::load(Args::default()).expect("defaults");
    if let Some(media) = &mut config.media {
        media.udp_addr.set_port(0);
    }
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(miclink::run(listener, config, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohost_reports_what_really_arrived() {
    let (addr, stop) = server().await;

    let url = format!("ws://{addr}/ws");
    let pid = std::process::id().to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_miclink-load"))
            .args([
                "cohost",
                "--viewers",
                "2",
                "--ramp",
                "20",
                "--warmup-s",
                "1",
            ])
            .args([
                "--duration-s",
                "2",
                "--json",
                "--url",
                &url,
                "--server-pid",
                &pid,
            ])
            .output()
            .expect("run miclink-load")
    })
    .await
    .expect("join");
    let _ = stop.send(());
    assert!(
        out.status.success(),
        "miclink-load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON report");
    assert_eq!(r["viewers_connected"], 2, "{r}");
    assert_eq!(r["publishers"], 10, "{r}");
    assert_eq!(r["viewers_without_media"], 0, "{r}");
    let expected = r["expected_packets"].as_u64().expect("expected");
    let delivered = r["delivered_packets"].as_u64().expect("delivered");
    // 10 publishers' audio and video reach 2 viewers and the 9 other publishers for 2 s: in the
    // thousands, and on loopback nearly all of it arrives.
    assert!(expected > 5_000, "{r}");
    assert!(delivered <= expected, "{r}");
    assert!(delivered * 100 >= expected * 98, "{r}");
    assert!(r["delay_p50_ms"].as_f64().is_some_and(|d| d > 0.0), "{r}");
    assert!(r["server_cpu_us_per_packet"].as_f64().is_some(), "{r}");
    assert!(r["join_to_first_packet_p50_ms"].as_f64().is_some(), "{r}");
}

/// `miclink-load encode` goes live through WHIP with the repository's VP8 file, sends for a
/// moment and ends the live with its DELETE; a file that is not there is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encode_goes_live_over_whip_and_its_delete_ends_it() {
    let (addr, stop) = server().await;
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/qcif-10s.ivf"
    );
    let whip = format!("http://{addr}/whip/encoded");
    let run = move |ivf: &'static str| {
        let whip = whip.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_miclink-load"))
                .args(["encode", "--whip", &whip, "--ivf", ivf, "--duration-s", "2"])
                .output()
                .expect("run miclink-load")
        })
    };
    let out = run(fixture).await.expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("live: http://"), "{stdout}");
    assert!(stdout.contains("200 OK"), "{stdout}");
    let out = run("/nonexistent.ivf").await.expect("join");
    assert!(!out.status.success());
    let _ = stop.send(());
}
