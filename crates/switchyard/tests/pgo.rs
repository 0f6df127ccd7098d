//! The rustc wrapper that gives optimized builds the profile
//! (`crates/switchyard/pgo/rustc-wrapper`, named by `.cargo/config.toml`),
//! run with a stand-in `rustc` that prints its arguments: which builds get
//! `-C profile-use`, and that every other build runs exactly as asked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

const PGO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pgo");

/// A stand-in `rustc` in a fresh directory: `-vV` names LLVM `llvm`, any
/// other call prints its arguments one per line.
fn fake_rustc(llvm: &str) -> PathBuf {
    // One per call: tests run in parallel, and a script being rewritten
    // can't be run.
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchyard-pgo-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rustc");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n\
             if [ \"$1\" = -vV ]; then echo 'rustc 1.95.0'; echo 'LLVM version: {llvm}'; exit 0; fi\n\
             for a in \"$@\"; do echo \"$a\"; done\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// An environment variable the wrapper runs with: name, value.
type Env = (&'static str, &'static str);

/// The arguments the wrapper passed on to `rustc`.
fn wrapped(rustc: &Path, args: &[&str], env: &[Env]) -> Vec<String> {
    let out = Command::new(Path::new(PGO_DIR).join("rustc-wrapper"))
        .arg(rustc)
        .args(args)
        .env_remove("SWITCHYARD_NO_PGO")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

const RELEASE: &[&str] = &["--crate-name", "tokio", "-C", "opt-level=3", "src/lib.rs"];

#[test]
fn optimized_builds_get_the_profile_and_nothing_else_changes() {
    let rustc = fake_rustc("22.1.2");
    let args = wrapped(&rustc, RELEASE, &[]);
    assert_eq!(
        args[..RELEASE.len()],
        *RELEASE,
        "the build's own arguments come first"
    );
    let profile = Path::new(PGO_DIR).join("switchyard.profdata");
    assert_eq!(
        args[RELEASE.len()..],
        [
            format!("-Cprofile-use={}", profile.display()),
            "-Cllvm-args=-no-pgo-warn-mismatch".to_owned()
        ],
    );
    assert!(
        profile.is_file(),
        "the profile is committed beside the wrapper"
    );
}

#[test]
fn other_builds_run_exactly_as_asked() {
    let rustc = fake_rustc("22.1.2");
    let generate = ["-C", "opt-level=3", "-Cprofile-generate=/tmp/raw", "lib.rs"];
    let cases: [(&[&str], &[Env]); 5] = [
        // An unoptimized build, a build script, cargo's probes.
        (&["--crate-name", "x", "src/lib.rs"], &[]),
        (&["-C", "opt-level=0", "build.rs"], &[]),
        (&["-vV"], &[]),
        // bench/pgo.sh's instrumented build chooses its own profile.
        (&generate, &[]),
        // Asked not to.
        (RELEASE, &[("SWITCHYARD_NO_PGO", "1")]),
    ];
    for (args, env) in cases {
        let expected: Vec<String> = if args == ["-vV"] {
            vec!["rustc 1.95.0".into(), "LLVM version: 22.1.2".into()]
        } else {
            args.iter().map(|a| (*a).to_owned()).collect()
        };
        assert_eq!(wrapped(&rustc, args, env), expected, "{args:?} {env:?}");
    }
}

#[test]
fn a_rustc_older_than_the_profile_builds_without_it() {
    // LLVM reads profiles written by its own version or older ones only.
    let wrapper = std::fs::read_to_string(Path::new(PGO_DIR).join("rustc-wrapper")).unwrap();
    let profile_llvm: u32 = wrapper
        .lines()
        .find_map(|l| l.strip_prefix("profile_llvm="))
        .expect("the wrapper names the LLVM that wrote the profile")
        .parse()
        .unwrap();
    let older = fake_rustc(&format!("{}.1.0", profile_llvm - 1));
    assert_eq!(wrapped(&older, RELEASE, &[]), RELEASE);
}

#[test]
fn cargo_runs_rustc_through_the_wrapper() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.cargo/config.toml");
    let config = std::fs::read_to_string(config).unwrap();
    assert!(
        config
            .lines()
            .any(|l| l.trim() == r#"rustc-wrapper = "crates/switchyard/pgo/rustc-wrapper""#),
        "{config}"
    );
}
