//! The fuzz targets' corpus and every crash input, through the functions the targets call
//! (`rdpwire::fuzzing`), on the stable toolchain: what a fuzzer once found stays fixed. See
//! `docs/security.md`, section "Fuzzing".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 4] = [
    ("browser_protocol", rdpwire::fuzzing::browser_protocol),
    ("egfx_wire", rdpwire::fuzzing::egfx_wire),
    ("token", rdpwire::fuzzing::token),
    ("http_request", rdpwire::fuzzing::http_request),
];

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    out.sort();
    out
}

fn run(target: &str, f: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = files(&root.join("corpus").join(target));
    inputs.extend(files(&root.join("artifacts").join(target)));
    for path in &inputs {
        let data = std::fs::read(path).unwrap();
        let result = std::panic::catch_unwind(|| f(&data));
        assert!(result.is_ok(), "{target}: {} panics", path.display());
    }
    inputs.len()
}

#[test]
fn every_corpus_and_crash_input_passes_without_a_panic() {
    for (target, f) in TARGETS {
        let n = run(target, f);
        println!("{target}: {n} inputs");
        assert!(n > 0, "{target}: no corpus under fuzz/corpus/{target}");
    }
}
