//! The architecture document names every module of the media plane and the signaling crate,
//! so its module tables cannot drift from the code again: a module added, moved or renamed
//! without its line in `docs/architecture.md` fails here.

use std::path::Path;

/// Every `.rs` file under `dir`, as a path relative to it (`core/relay/edge.rs`).
fn modules(dir: &Path, under: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            modules(&path, under, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(under).expect("under the crate");
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[test]
fn the_architecture_document_names_every_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("the document");
    let mut missing = Vec::new();
    for krate in ["crates/sfu/src", "crates/signaling/src"] {
        let src = root.join(krate);
        let mut found = Vec::new();
        modules(&src, &src, &mut found);
        assert!(found.len() > 5, "{krate}: {found:?}");
        for module in found {
            if !doc.contains(&format!("`{module}`")) {
                missing.push(format!("{krate}/{module}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/architecture.md names no line for these modules (add each to its crate's module \
         table, in backquotes): {missing:?}"
    );
}
