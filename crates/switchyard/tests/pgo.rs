//! The rustc wrapper that gives optimized builds the profile
//! (`crates/switchyard/pgo/rustc-wrapper`, named by `.cargo/config.toml`),
//! run with a stand-in `rustc` that prints its arguments: which builds get
//! `-C profile-use`, and that every other build runs exactly as asked.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

const PGO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/pgo");

/// The LLVM major version the wrapper says wrote the profile.
fn profile_llvm() -> u32 {
    let wrapper = std::fs::read_to_string(Path::new(PGO_DIR).join("rustc-wrapper")).unwrap();
    wrapper
        .lines()
        .find_map(|l| l.strip_prefix("profile_llvm="))
        .expect("the wrapper names the LLVM that wrote the profile")
        .parse()
        .unwrap()
}

/// A stand-in `rustc`, made once (a script being written can't be run
/// while another test starts a process): `-vV` names the LLVM version in
/// `FAKE_LLVM`, any other call prints its arguments one per line.
fn fake_rustc() -> &'static Path {
    static FAKE: OnceLock<PathBuf> = OnceLock::new();
    FAKE.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fake-rustc-{}", std::process::id()));
        let tmp = path.with_extension("new");
        std::fs::write(
            &tmp,
            "#!/bin/sh\n\
             if [ \"$1\" = -vV ]; then echo 'rustc 1.95.0'; echo \"LLVM version: $FAKE_LLVM\"; exit 0; fi\n\
             for a in \"$@\"; do echo \"$a\"; done\n",
        )
        .unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    })
}

/// An environment variable the wrapper runs with: name, value.
type Env = (&'static str, &'static str);

/// The arguments the wrapper passed on to `rustc`, whose LLVM is `llvm`.
fn wrapped(llvm: &str, args: &[&str], env: &[Env]) -> Vec<String> {
    let out = Command::new(Path::new(PGO_DIR).join("rustc-wrapper"))
        .arg(fake_rustc())
        .args(args)
        .env_remove("SWITCHYARD_NO_PGO")
        .env("FAKE_LLVM", llvm)
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

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

const RELEASE: &[&str] = &["--crate-name", "tokio", "-C", "opt-level=3", "src/lib.rs"];

#[test]
fn optimized_builds_get_the_profile_after_their_own_arguments() {
    let llvm = format!("{}.1.2", profile_llvm());
    let profile = Path::new(PGO_DIR).join("switchyard.profdata");
    assert!(
        profile.is_file(),
        "the profile is committed beside the wrapper"
    );
    let added = [
        format!("-Cprofile-use={}", profile.display()),
        "-Cllvm-args=-no-pgo-warn-mismatch".to_owned(),
    ];
    let optimized: [&[&str]; 4] = [
        RELEASE,
        // From RUSTFLAGS, one argument; the last level given is rustc's.
        &["-Copt-level=3", "lib.rs"],
        &["-C", "opt-level=2", "-Copt-level=3", "lib.rs"],
        // Only flags choose a profile, not a path that names one.
        &["-C", "opt-level=3", "--out-dir", "/home/profile-use/target"],
    ];
    for args in optimized {
        let mut expected = owned(args);
        expected.extend(added.iter().cloned());
        assert_eq!(wrapped(&llvm, args, &[]), expected, "{args:?}");
    }
}

#[test]
fn other_builds_run_exactly_as_asked() {
    let llvm = format!("{}.1.2", profile_llvm());
    let generate = [
        "-C",
        "opt-level=3",
        "-C",
        "profile-generate=/tmp/raw",
        "lib.rs",
    ];
    let cases: [(&[&str], &[Env]); 6] = [
        // Unoptimized or another level, a build script.
        (&["--crate-name", "x", "src/lib.rs"], &[]),
        (&["-C", "opt-level=0", "build.rs"], &[]),
        (&["-C", "opt-level=3", "-Copt-level=s", "lib.rs"], &[]),
        // bench/pgo.sh's instrumented build chooses its own profile.
        (&generate, &[]),
        // Asked not to.
        (RELEASE, &[("SWITCHYARD_NO_PGO", "1")]),
        // Cargo's probe.
        (&["-vV"], &[]),
    ];
    for (args, env) in cases {
        let expected = if args == ["-vV"] {
            owned(&["rustc 1.95.0", &format!("LLVM version: {llvm}")])
        } else {
            owned(args)
        };
        assert_eq!(wrapped(&llvm, args, env), expected, "{args:?} {env:?}");
    }
}

#[test]
fn a_rustc_older_than_the_profile_builds_without_it() {
    // LLVM reads profiles written by its own version or older ones only.
    let older = format!("{}.1.0", profile_llvm() - 1);
    assert_eq!(wrapped(&older, RELEASE, &[]), RELEASE);
    // Nor one that doesn't say.
    assert_eq!(wrapped("", RELEASE, &[]), RELEASE);
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
