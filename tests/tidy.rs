//! House rules checked as text: the core stays pure (STYLE.md, "The sans-IO contract").

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benches may unwrap.

use std::fs;
use std::path::Path;

/// What the protocol core must never touch: I/O, clocks, threads, OS randomness, the runtime.
const FORBIDDEN_IN_CORE: &[&str] = &[
    "std::fs",
    "std::net",
    "std::thread",
    "std::time",
    "std::process",
    "std::env",
    "Instant::",
    "SystemTime",
    "glommio",
    "tokio",
    "io_uring",
    "thread_rng",
    "OsRng",
    "getrandom",
    "rand::random",
    ".await",
    "Mutex",
    "println!",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_does_no_io_reads_no_clock_and_spawns_no_thread() {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core"), &mut files);
    assert!(files.len() >= 5, "src/core/ not found");
    let mut problems = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).expect("readable source");
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in FORBIDDEN_IN_CORE {
                if code.contains(word) {
                    problems.push(format!(
                        "{}:{}: `{word}` in the core",
                        file.display(),
                        number + 1
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_source_file_opens_with_a_module_comment() {
    let mut files = Vec::new();
    for dir in ["src", "wal/src", "tests", "benches"] {
        rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join(dir), &mut files);
    }
    let missing: Vec<String> = files
        .iter()
        .filter(|file| !fs::read_to_string(file).expect("readable").trim_start().starts_with("//!"))
        .map(|file| file.display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a `//!` opening: {missing:?}");
}
