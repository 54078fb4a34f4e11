//! The binary starts and describes its flags. (Also: an integration test makes
//! `cargo test --workspace` build `tanks-demo` itself, which `hack/run` and the main-job
//! test in `tests/` run.)

use std::process::Command;

#[test]
fn help_names_the_main_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_tanks-demo"))
        .arg("--help")
        .output()
        .expect("tanks-demo runs");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--players", "--duration", "--namespace"] {
        assert!(text.contains(flag), "{flag} missing from:\n{text}");
    }
}
