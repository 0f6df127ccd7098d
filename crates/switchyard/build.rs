//! Lays out the release binary's request path compactly.
//!
//! `hot-symbols.txt` lists the functions a proxied request runs, hottest
//! first (written by `bench/instructions.sh --hot-symbols`). The release
//! build asks the linker to place them together at the start of the code:
//! a request then runs through about half as many 4 KiB pages of machine
//! code (69 against 130), which measured 3% less CPU per request
//! (docs/performance.md). Nothing else changes: a listed symbol that no
//! longer exists is skipped, and a function missing from the list stays
//! where it would have been.
//!
//! Only where the linker is known to be LLD, which takes
//! `--symbol-ordering-file`: `x86_64-unknown-linux-gnu` since Rust 1.90
//! (this workspace's minimum), with a toolchain that ships LLD for it (a
//! rustup one does; a distribution's rustc built to use the system linker
//! does not, and is left alone). Skipped too when the build chooses its
//! own linker (`-C linker…` in the flags, a `*_LINKER` variable) or when
//! `SWITCHYARD_NO_SYMBOL_ORDER` is set.

use std::{env, path::Path, process::Command};

fn main() {
    println!("cargo:rerun-if-changed=hot-symbols.txt");
    println!("cargo:rerun-if-env-changed=SWITCHYARD_NO_SYMBOL_ORDER");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");

    let var = |name: &str| env::var(name).unwrap_or_default();
    let own_linker = var("CARGO_ENCODED_RUSTFLAGS")
        .split('\x1f')
        .any(|flag| flag.contains("linker") || flag.contains("link-self-contained"))
        || env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
        || env::var_os("RUSTC_LINKER").is_some();
    if var("TARGET") != "x86_64-unknown-linux-gnu"
        || var("PROFILE") != "release"
        || own_linker
        || env::var_os("SWITCHYARD_NO_SYMBOL_ORDER").is_some()
    {
        return;
    }
    let list = Path::new(&var("CARGO_MANIFEST_DIR")).join("hot-symbols.txt");
    if !list.is_file() || !ships_lld(&var("RUSTC")) {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    // The list outlives the code it was taken from: skipped names are expected.
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

/// Whether `rustc`'s toolchain has the LLD it links this target with by
/// default (`gcc-ld/ld.lld` in its sysroot).
fn ships_lld(rustc: &str) -> bool {
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout);
    Path::new(sysroot.trim())
        .join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld/ld.lld")
        .is_file()
}
