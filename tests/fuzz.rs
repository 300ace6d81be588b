//! CI's short fuzz run: every target of fuzz/harness.rs for a few thousand mutated inputs from a fixed seed (so a
//! failure reproduces), and every committed regression input under fuzz/regressions/. Long runs:
//! `cargo run --release --example fuzz -- --execs 1000000`.

#[path = "../fuzz/harness.rs"]
mod harness;

#[allow(dead_code)]
#[path = "../src/bin/cliprt/main.rs"]
mod cli;

/// Executions per target: `CLIPRT_FUZZ_EXECS`, else 3000 (about 10 s for all targets on the 2-core dev box).
fn execs() -> u64 {
    std::env::var("CLIPRT_FUZZ_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

#[test]
fn every_target_survives_a_short_run_and_every_regression_input() {
    let work = tempfile::tempdir().unwrap();
    let workspaces: Vec<harness::Workspace> = (0..2)
        .map(|w| harness::Workspace::new(work.path().join(format!("w{w}"))))
        .collect();
    let crashes = work.path().join("crashes");
    let mut failures = Vec::new();
    for t in harness::targets(&workspaces[0], cli::check_args) {
        for (file, parts) in harness::regressions(t.name) {
            if let Err(f) = harness::execute(&t, &workspaces[0], &parts) {
                failures.push(format!(
                    "{}: regression {} fails again: {f}",
                    t.name,
                    file.display()
                ));
            }
        }
        let r = harness::fuzz(&t, &workspaces, execs(), None, 20261206, &crashes);
        println!(
            "{}: {} execs, {} accepted, {} refused, slowest {:.3} s",
            t.name,
            r.execs,
            r.accepted,
            r.refused,
            r.slowest.as_secs_f64()
        );
        assert!(
            r.accepted > 0,
            "{}: no mutant was accepted; the seeds are broken",
            t.name
        );
        failures.extend(
            r.failures
                .iter()
                .map(|(why, file)| format!("{}: {why} ({})", t.name, file.display())),
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
