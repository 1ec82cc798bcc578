//! Run by hand (not by keel), the demo worker says what it is and exits non-zero.
//! (This test also makes `cargo test --workspace` build the binary that keel's own
//! integration tests start.)

#[test]
fn without_keel_fd_it_explains_and_exits() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keel-demo-worker"))
        .env_remove("KEEL_FD")
        .env_remove("KEEL_ATTACH")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("KEEL_FD"), "{stderr}");
    assert!(stderr.contains("KEEL_ATTACH"), "{stderr}");
}
