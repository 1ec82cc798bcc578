//! `keel check` and `keel init` as a user runs them.

mod common;
use common::*;
use std::process::Command;

fn keel(args: &[&str], dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(keel_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_names_file_line_and_key_for_each_broken_config() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad");
    let mut checked = 0;
    for entry in std::fs::read_dir(&fixtures).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
        let (ok, _, stderr) = keel(&["check", "--config", path.to_str().unwrap()], &fixtures);
        assert!(!ok, "{} passed check", path.display());
        for want in expected.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                stderr.contains(want.trim()),
                "{}: expected {want:?} in {stderr:?}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 5, "only {checked} fixtures");
}

#[test]
fn init_writes_the_embedded_default_and_it_checks_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = keel(&["init"], dir.path());
    assert!(ok, "{err}");
    let written = std::fs::read_to_string(dir.path().join("keel.toml")).unwrap();
    assert!(written.contains("127.0.0.1:8080"));
    assert!(written.contains("keel-demo-worker"));
    let (ok, out, err) = keel(&["check"], dir.path());
    assert!(ok, "{err}");
    assert!(out.contains("ok"), "{out}");
    // A second init does not overwrite.
    let (ok, _, err) = keel(&["init"], dir.path());
    assert!(!ok);
    assert!(err.contains("exists"), "{err}");
}

#[test]
fn serve_without_config_runs_the_embedded_default_demo() {
    // The embedded default binds 127.0.0.1:8080; only run when that port is free.
    if std::net::TcpListener::bind("127.0.0.1:8080").is_err() {
        eprintln!("port 8080 busy: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Its own runtime directory (as systemd's RuntimeDirectory= gives one), so that a keel
    // already running here with the default /run/keel/admin.sock does not stop this one.
    let runtime = dir.path().join("run");
    let d = Daemon::start_custom(dir, &["serve"], |cmd| {
        cmd.env("RUNTIME_DIRECTORY", &runtime);
    });
    let r = get("127.0.0.1:8080".parse().unwrap(), "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "Hello from keel");
    drop(d);
}
