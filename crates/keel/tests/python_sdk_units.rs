//! The Python worker library's own unit tests (`sdk/python/tests`: frame codec, WSGI and
//! ASGI adapters, windows, drain), run with the machine's python3 so that the workspace's
//! test command covers them too.

mod common;
use std::process::Command;

#[test]
fn the_python_sdk_unit_tests_pass() {
    let sdk = common::workspace_root().join("sdk/python");
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "tests"])
        .current_dir(&sdk)
        .env("PYTHONPATH", &sdk)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert!(report.contains("\nOK"), "{report}");
    let ran: usize = report
        .split("Ran ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ran >= 20, "only {ran} tests found: {report}");
}
