//! The report: one table row per scenario, or one JSON document.

use crate::{Outcome, ScenarioReport};
use std::fmt::Write;

/// The table an operator reads: scenario, family, pipeline, where and when the fault was
/// injected, outcome, time to recover, and each invariant (failed ones with their detail).
pub fn table(reports: &[ScenarioReport], seed: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<44} {:<9} {:<11} {:>9} {:>8}  invariants",
        "scenario", "family", "outcome", "recovery", "elapsed"
    );
    for r in reports {
        let outcome = match r.outcome {
            Outcome::Converged => "converged",
            Outcome::RolledBack => "rolled back",
            Outcome::Failed => "FAILED",
        };
        let recovery = r
            .recovery_ms
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let passed = r.invariants.iter().filter(|c| c.ok).count();
        let _ = writeln!(
            out,
            "{:<44} {:<9} {:<11} {:>9} {:>7.0}s  {passed}/{} ok",
            r.scenario,
            r.family.to_string(),
            outcome,
            recovery,
            r.elapsed_ms as f64 / 1000.0,
            r.invariants.len()
        );
        let _ = writeln!(out, "    pipeline {}: {}", r.pipeline, r.fault);
        if !r.injected.is_empty() {
            let _ = writeln!(out, "    injected: {}", r.injected.join("; "));
        }
        for c in r.invariants.iter().filter(|c| !c.ok) {
            let _ = writeln!(out, "    VIOLATED {}: {}", c.invariant, c.detail);
        }
        if let Some(e) = &r.error {
            let _ = writeln!(out, "    error: {e}");
        }
    }
    let failed = reports.iter().filter(|r| !r.passed()).count();
    let total_s: u64 = reports.iter().map(|r| r.elapsed_ms).sum::<u64>() / 1000;
    let _ = writeln!(
        out,
        "{} scenarios, {} passed, {failed} FAILED (seed {seed}, {total_s}s)",
        reports.len(),
        reports.len() - failed
    );
    out
}

/// The same as JSON, for scripts.
pub fn json(reports: &[ScenarioReport], seed: u64) -> serde_json::Value {
    serde_json::json!({
        "seed": seed,
        "passed": reports.iter().all(ScenarioReport::passed),
        "scenarios": reports,
    })
}
