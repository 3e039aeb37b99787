//! Human renderings of runs, plans and locks (stderr/stdout text); JSON comes from serde.

use chrono::{DateTime, Utc};
use dive_engine::store::{LockRecord, RunRecord, RunSummary};
use dive_engine::{Plan, Workflow};
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Logs are JSON lines (`--log-format json`): stderr carries nothing else.
pub fn set_json_logs() {
    JSON_LOGS.store(true, Ordering::Relaxed);
}

pub fn json_logs() -> bool {
    JSON_LOGS.load(Ordering::Relaxed)
}

/// What [`note!`] prints.
pub fn note(line: String) {
    if json_logs() {
        tracing::info!("{line}");
    } else {
        eprintln!("{line}");
    }
}

fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn took(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> String {
    match (start, end) {
        (Some(s), Some(e)) => format!("{:.2}s", (e - s).num_milliseconds() as f64 / 1000.0),
        (Some(_), None) => "…".into(),
        _ => "-".into(),
    }
}

pub fn runs_table(runs: &[RunSummary]) -> String {
    let mut out = format!(
        "{:<36}  {:<18}  {:<24}  {:<19}  {:>9}\n",
        "ID", "WORKFLOW", "STATE", "STARTED", "TOOK"
    );
    for r in runs {
        let state = if r.orphaned {
            format!("{} (orphaned)", r.state)
        } else {
            r.state.to_string()
        };
        let _ = writeln!(
            out,
            "{:<36}  {:<18}  {:<24}  {:<19}  {:>9}",
            r.id,
            r.workflow,
            state,
            when(&r.started_at),
            took(Some(r.started_at), r.finished_at)
        );
    }
    if runs.iter().any(|r| r.orphaned) {
        out.push_str(
            "\norphaned: no process holds the run's locks; `dive resume ID` takes it over\n",
        );
    }
    out
}

pub fn run_details(run: &RunRecord) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "run       {}", run.id);
    let _ = writeln!(out, "workflow  {}", run.workflow);
    let orphan = if run.orphaned {
        " (orphaned: resume it with `dive resume`)"
    } else {
        ""
    };
    let _ = writeln!(out, "state     {}{orphan}", run.state);
    let _ = writeln!(out, "lock      {}", run.lock_keys.join(", "));
    let _ = writeln!(out, "params    {}", run.params);
    let _ = writeln!(
        out,
        "started   {}   took {}",
        when(&run.started_at),
        took(Some(run.started_at), run.finished_at)
    );
    if let Some(e) = &run.error {
        let _ = writeln!(out, "error     {e}");
    }
    let _ = writeln!(
        out,
        "\n{:<24}  {:<14}  {:<20}  {:>8}  {:>9}  ERROR",
        "PHASE", "TYPE", "STATE", "ATTEMPTS", "TOOK"
    );
    for p in &run.phases {
        let _ = writeln!(
            out,
            "{:<24}  {:<14}  {:<20}  {:>8}  {:>9}  {}",
            p.id,
            p.kind,
            p.state,
            p.attempts,
            took(p.started_at, p.finished_at),
            p.error.as_deref().unwrap_or("")
        );
        for a in p.history.iter().filter(|a| a.error.is_some()) {
            let _ = writeln!(
                out,
                "    attempt {} {}: {}",
                a.attempt,
                a.state,
                a.error.as_deref().unwrap_or("")
            );
        }
        if let Some(c) = &p.compensation {
            let _ = writeln!(
                out,
                "    compensation {} ({}){}",
                c.state,
                took(Some(c.started_at), c.finished_at),
                c.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
    }
    if !run.breaker_events.is_empty() {
        let _ = writeln!(out, "\nBREAKER TRANSITIONS");
        for b in &run.breaker_events {
            let _ = writeln!(
                out,
                "  {}  {:<24}  {}",
                b.at.format("%H:%M:%S%.3f"),
                b.breaker,
                b.transition
            );
        }
    }
    out
}

pub fn locks_table(locks: &[LockRecord]) -> String {
    if locks.is_empty() {
        return "no locks\n".into();
    }
    let mut out = format!(
        "{:<32}  {:<36}  {:<7}  {:<16}  {:>7}  HOST\n",
        "KEY", "RUN", "HELD", "RUN STATE", "PID"
    );
    for l in locks {
        let _ = writeln!(
            out,
            "{:<32}  {:<36}  {:<7}  {:<16}  {:>7}  {}",
            l.key,
            l.run_id,
            if l.held { "held" } else { "stale" },
            l.run_state
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            l.pid,
            l.host
        );
    }
    out
}

pub fn plan_text(workflow: &Workflow, plan: &Plan) -> String {
    let mut out = format!("workflow  {}\n", plan.workflow);
    if let Some(d) = &plan.description {
        let _ = writeln!(out, "          {d}");
    }
    let _ = writeln!(out, "source    {}", plan.source);
    let _ = writeln!(out, "lock      {}", plan.lock_keys.join(", "));
    for (name, spec) in &workflow.params {
        let _ = writeln!(
            out,
            "param     {name} = {}{}{}",
            plan.params.get(name).map(String::as_str).unwrap_or("?"),
            spec.pattern
                .as_ref()
                .map(|p| format!("  (pattern {})", p.as_str()))
                .unwrap_or_default(),
            spec.description
                .as_ref()
                .map(|d| format!("  — {d}"))
                .unwrap_or_default()
        );
    }
    let dag = plan.dag();
    let _ = writeln!(out, "\nphases in dependency order:");
    for &i in &dag.topo {
        let p = &plan.phases[i];
        let _ = writeln!(
            out,
            "  {:<24} {:<16} after [{}]  retry {}x  timeout {}{}",
            p.id,
            p.kind,
            p.after.join(", "),
            p.retry.max_attempts,
            humantime::format_duration(p.timeout),
            p.breaker
                .as_ref()
                .map(|b| format!("  breaker {b}"))
                .unwrap_or_default()
        );
    }
    out
}

fn quoted(id: &str) -> String {
    format!("\"{}\"", id.replace('"', "\\\""))
}

pub fn plan_dot(plan: &Plan) -> String {
    let mut out = format!("digraph {} {{\n  rankdir=LR;\n", quoted(&plan.workflow));
    for p in &plan.phases {
        let _ = writeln!(
            out,
            "  {} [label={}];",
            quoted(&p.id),
            quoted(&format!("{}\\n{}", p.id, p.kind))
        );
        for dep in &p.after {
            let _ = writeln!(out, "  {} -> {};", quoted(dep), quoted(&p.id));
        }
    }
    out.push_str("}\n");
    out
}

pub fn plan_mermaid(plan: &Plan) -> String {
    let node = |id: &str| id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_");
    let mut out = String::from("flowchart LR\n");
    for p in &plan.phases {
        let _ = writeln!(out, "  {}[\"{}<br/>{}\"]", node(&p.id), p.id, p.kind);
        for dep in &p.after {
            let _ = writeln!(out, "  {} --> {}", node(dep), node(&p.id));
        }
    }
    out
}
