//! Every input in `fuzz/seeds/` (hand-made starting points) and `fuzz/regressions/` (what a
//! fuzzer once found, minimized) through the same checks the fuzz targets run, on every
//! `cargo test`: a crash once found stays fixed without a fuzzer installed.

use std::path::{Path, PathBuf};

use miclink_checks::{Broken, cluster, frame, media, sdp, seats};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut files: Vec<PathBuf> = ["seeds", "regressions"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(root.join(dir).join(target)).ok())
        .flatten()
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    files.sort();
    files
}

fn replay(target: &str, check: impl Fn(&[u8]) -> Result<(), Broken>) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no seeds for {target} in fuzz/seeds/{target}"
    );
    let failed: Vec<String> = files
        .iter()
        .filter_map(|path| {
            let data = std::fs::read(path).expect("readable input");
            check(&data)
                .err()
                .map(|broken| format!("{}: {broken}", path.display()))
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn frame_inputs_hold() {
    replay("frame", frame::check_bytes);
}

#[test]
fn seats_inputs_hold() {
    replay("seats", |data| seats::run(&seats::decode(data)));
}

#[test]
fn media_inputs_hold() {
    replay("media", media::check);
}

#[test]
fn sdp_inputs_hold() {
    replay("sdp", sdp::check);
}

#[test]
fn cluster_inputs_hold() {
    replay("cluster", cluster::check);
}
