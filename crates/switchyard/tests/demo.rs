//! `switchyard demo --duration 20s`: the narrated run shows the faults, a
//! breaker opening and closing again, and the product page degrading
//! instead of failing while reviews are down.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

#[test]
fn the_demo_shows_a_breaker_opening_and_closing_and_the_page_degrading() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["demo", "--duration", "20s", "--rate", "50"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for fault in [
        "catalog-2 dies",
        "pricing-1 slows down 10x",
        "every reviews instance answers 503",
        "recovery",
    ] {
        assert!(stdout.contains(fault), "missing {fault:?}:\n{stdout}");
    }
    assert!(
        stdout.contains("breaker reviews: closed -> open"),
        "{stdout}"
    );
    assert!(stdout.contains("-> closed"), "{stdout}");
    // While reviews are down the product page still answers, degraded.
    let degraded = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("/product/{id}"))
        .filter_map(|l| {
            l.split_whitespace()
                .last()?
                .trim_end_matches('%')
                .parse::<f64>()
                .ok()
        })
        .fold(0.0_f64, f64::max);
    assert!(
        degraded > 50.0,
        "the product page never degraded:\n{stdout}"
    );
    let errors = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("/product/{id}"))
        .filter_map(|l| l.split_whitespace().nth(4)?.parse::<f64>().ok())
        .fold(0.0_f64, f64::max);
    assert!(
        errors < 50.0,
        "the product page failed instead of degrading:\n{stdout}"
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("summary:"))
        .expect("a summary line");
    assert!(!summary.contains("opened 0 "), "{summary}");
}
