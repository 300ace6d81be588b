//! The fuzz harness's long runs (fuzz/harness.rs has the targets and the loop):
//!
//! ```text
//! cargo run --release --example fuzz -- [--target NAME[,NAME…]|all] [--execs N] [--seconds S] [--seed N]
//!                                       [--workers N] [--replay FILE]
//! ```
//! Prints one line per target: executions, accepted, refused, failures (saved under fuzz/crashes/), the slowest
//! execution and the peak RSS. Exits 1 when anything failed.

#[path = "../fuzz/harness.rs"]
mod harness;

// The command line's own parser and checks, compiled in so that the `cli` target runs them in-process.
#[allow(dead_code)]
#[path = "../src/bin/cliprt/main.rs"]
mod cli;

use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn peak_rss_mb() -> f64 {
    cliprt::bench::peak_rss_mb().unwrap_or(f64::NAN)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "{}",
            include_str!("fuzz.rs")
                .lines()
                .take(8)
                .collect::<Vec<_>>()
                .join("\n")
        );
        return;
    }
    let execs: u64 = arg(&args, "--execs").map_or(100_000, |v| v.parse().expect("--execs N"));
    let seconds: Option<u64> = arg(&args, "--seconds").map(|v| v.parse().expect("--seconds S"));
    let seed: u64 = arg(&args, "--seed").map_or(1, |v| v.parse().expect("--seed N"));
    let workers: usize = arg(&args, "--workers").map_or(2, |v| v.parse().expect("--workers N"));
    let which = arg(&args, "--target").unwrap_or_else(|| "all".into());
    let work = std::env::temp_dir().join(format!("cliprt-fuzz-{}", std::process::id()));
    let workspaces: Vec<harness::Workspace> = (0..workers.max(1))
        .map(|w| harness::Workspace::new(work.join(format!("w{w}"))))
        .collect();
    let targets = harness::targets(&workspaces[0], cli::check_args);
    if let Some(file) = arg(&args, "--replay") {
        let parts = harness::decode_parts(&std::fs::read(&file).expect("replay file"))
            .expect("a parts file");
        let t = targets
            .iter()
            .find(|t| t.name == which)
            .expect("--target NAME with --replay");
        println!(
            "{:?}",
            harness::execute(t, &workspaces[0], &parts).map(|_| "ok")
        );
        return;
    }
    let crashes = harness::fuzz_dir().join("crashes");
    let mut failed = false;
    for t in targets
        .iter()
        .filter(|t| which == "all" || which.split(',').any(|w| w == t.name))
    {
        for (file, parts) in harness::regressions(t.name) {
            if let Err(f) = harness::execute(t, &workspaces[0], &parts) {
                println!("  regression {} fails again: {f}", file.display());
                failed = true;
            }
        }
        let start = Instant::now();
        let deadline = seconds.map(|s| start + Duration::from_secs(s));
        let r = harness::fuzz(t, &workspaces, execs, deadline, seed, &crashes);
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{:<13} {:>9} execs in {:>7.1} s ({:>7.0}/s): {:>9} accepted, {:>9} refused, {} failures; slowest {:.3} s; \
             peak RSS {:.0} MB",
            t.name,
            r.execs,
            secs,
            r.execs as f64 / secs,
            r.accepted,
            r.refused,
            r.failures.len(),
            r.slowest.as_secs_f64(),
            peak_rss_mb()
        );
        for (why, file) in r.failures.iter().take(20) {
            println!("  {why}: {}", file.display());
        }
        failed |= !r.failures.is_empty();
    }
    let _ = std::fs::remove_dir_all(&work);
    if failed {
        std::process::exit(1);
    }
}
