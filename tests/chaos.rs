//! The chaos suite's CI selection (`dive chaos run --ci`): at least one scenario of every fault
//! family, over every pipeline, against real PostgreSQL and Keycloak; every scenario must
//! converge or roll back as promised with every invariant holding.

use serde_json::Value;
use std::process::Command;

const DIVE: &str = env!("CARGO_BIN_EXE_dive");

#[test]
fn the_ci_selection_of_the_chaos_suite_passes() {
    let list = Command::new(DIVE)
        .args(["chaos", "list", "--json"])
        .output()
        .expect("dive chaos list");
    let catalogue: Vec<Value> = serde_json::from_slice(&list.stdout).expect("catalogue JSON");
    let ci: Vec<&Value> = catalogue.iter().filter(|s| s["ci"] == true).collect();
    assert!(
        ci.len() >= 12,
        "the CI selection has {} scenarios",
        ci.len()
    );
    for family in ["network", "partition", "database", "process", "secrets"] {
        assert!(
            ci.iter().any(|s| s["family"] == family),
            "no {family} scenario in the CI selection"
        );
    }

    // Bad selections are refused before anything starts.
    let out = Command::new(DIVE)
        .args(["chaos", "run", "--scenario", "no-such-scenario"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-scenario"));

    let out = Command::new(DIVE)
        .args(["chaos", "run", "--ci", "--seed", "7", "--json"])
        .env_remove("DIVE_DATABASE_URL")
        .output()
        .expect("dive chaos run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stderr}"));
    let scenarios = report["scenarios"].as_array().expect("scenarios");
    assert_eq!(scenarios.len(), ci.len(), "{report:#}");
    for s in scenarios {
        assert_ne!(s["outcome"], "FAILED", "{s:#}");
        for c in s["invariants"].as_array().unwrap() {
            assert_eq!(c["ok"], true, "{}: {c:#}", s["scenario"]);
        }
        assert!(!s["injected"].as_array().unwrap().is_empty(), "{s:#}");
    }
    assert_eq!(report["passed"], true);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
