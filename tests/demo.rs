//! The README's first quick-start command must work with no setup at all.

use std::process::Command;

#[test]
fn the_demo_runs_and_loses_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_mailroute"))
        .args(["demo", "--messages", "900", "--rate", "3000"])
        .output()
        .expect("demo starts");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sent 900: lost 0, misrouted 0"), "{stdout}");
}
