//! `--dry-run`: what a run of a workflow would change, object by object, printed as a plan
//! grouped by instance (`+` create, `~` update, `-` delete, `>` start, `!` would run, `?` known
//! after apply) or as JSON; nothing is written. Exit code 0 when nothing would change, 4 when
//! something would ([`exit::CHANGES`]).

use crate::commands::print_json;
use crate::{database, exit, services};
use anyhow::Result;
use dive_engine::{Action, Change, DryRun, Plan, RunOptions};
use serde::Serialize;
use serde_json::Value;
use std::io::IsTerminal;

/// Plans `plan` on `kind` and prints it; returns the exit code.
pub async fn dry_run(plan: &Plan, kind: dive_runtime::RuntimeKind, json: bool) -> Result<u8> {
    let store = database::open_for_plan().await?;
    let engine = services::plan_engine(&store, kind).await?;
    let dry = engine.dry_run(plan, &RunOptions::default()).await?;
    let summary = Summary::of(&dry);
    if json {
        print_json(&PlanJson {
            would_change: dry.would_change(),
            summary,
            plan: &dry,
        })?;
    } else {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        print!("{}", render(&dry, &summary, colour));
    }
    Ok(if dry.would_change() {
        exit::CHANGES
    } else {
        exit::OK
    })
}

#[derive(Serialize)]
struct PlanJson<'a> {
    would_change: bool,
    summary: Summary,
    #[serde(flatten)]
    plan: &'a DryRun,
}

/// How many objects each action touches.
#[derive(Debug, Default, Serialize)]
struct Summary {
    create: usize,
    update: usize,
    delete: usize,
    start: usize,
    stop: usize,
    run: usize,
    known_after_apply: usize,
}

impl Summary {
    fn of(dry: &DryRun) -> Summary {
        let mut s = Summary::default();
        for c in dry.changes() {
            *match c.action {
                Action::Create => &mut s.create,
                Action::Update => &mut s.update,
                Action::Delete => &mut s.delete,
                Action::Start => &mut s.start,
                Action::Stop => &mut s.stop,
                Action::Run => &mut s.run,
                Action::KnownAfterApply => &mut s.known_after_apply,
            } += 1;
        }
        s
    }
}

/// The plan as text: instances in order of appearance, each object with its fields.
fn render(dry: &DryRun, summary: &Summary, colour: bool) -> String {
    let params: Vec<String> = dry.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut out = format!("Plan: {} ({})\n", dry.workflow, params.join(", "));
    if !dry.would_change() {
        out.push_str("\nNo changes: everything is as this workflow would make it.\n");
        return out;
    }
    let mut groups: Vec<(String, Vec<&Change>)> = Vec::new();
    for change in dry.changes() {
        let group = change
            .instance
            .clone()
            .unwrap_or_else(|| "dive home".into());
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, list)) => list.push(change),
            None => groups.push((group, vec![change])),
        }
    }
    for (group, changes) in groups {
        out.push_str(&format!("\n{group}\n"));
        for c in changes {
            let line = format!("  {} {}", c.action.mark(), c.object);
            out.push_str(&paint(&line, c.action, colour));
            if let Some(reason) = &c.reason {
                out.push_str(&format!("  ({reason})"));
            }
            out.push('\n');
            for f in &c.fields {
                let text = if f.old.is_null() {
                    show(&f.new)
                } else {
                    format!("{} → {}", show(&f.old), show(&f.new))
                };
                out.push_str(&format!("      {}: {text}\n", f.field));
            }
        }
    }
    let counts: Vec<String> = [
        ("to create", summary.create),
        ("to update", summary.update),
        ("to delete", summary.delete),
        ("to start", summary.start),
        ("to stop", summary.stop),
        ("to run", summary.run),
        ("known after apply", summary.known_after_apply),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(k, n)| format!("{n} {k}"))
    .collect();
    out.push_str(&format!("\nPlan: {}.\n", counts.join(", ")));
    out
}

/// A value as the plan shows it: text unquoted, anything else as compact JSON.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// ANSI colour for a plan line on a terminal.
fn paint(line: &str, action: Action, colour: bool) -> String {
    if !colour {
        return line.to_string();
    }
    let code = match action {
        Action::Create => "32",
        Action::Update | Action::Start | Action::Stop => "33",
        Action::Delete => "31",
        Action::Run | Action::KnownAfterApply => "36",
    };
    format!("\x1b[{code}m{line}\x1b[0m")
}

#[cfg(test)]
mod tests {
    use super::*;
    use dive_engine::dry_run::PlannedStep;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn plan(changes: Vec<Change>) -> DryRun {
        DryRun {
            workflow: "hub-deploy".into(),
            params: BTreeMap::from([("code".into(), "USA".into())]),
            steps: vec![PlannedStep {
                phase: "p".into(),
                kind: "t".into(),
                description: None,
                changes,
            }],
        }
    }

    #[test]
    fn a_plan_groups_by_instance_and_shows_old_and_new_values() {
        let dry = plan(vec![
            Change::new(Some("usa"), "realm dive-usa", Action::Update).field(
                "displayName",
                "old",
                "DIVE USA",
            ),
            Change::new(None, "secret ca/authority", Action::Create).field(
                "value",
                Value::Null,
                "(sensitive)",
            ),
            Change::new(Some("USA"), "service keycloak (local)", Action::Start),
        ]);
        let text = render(&dry, &Summary::of(&dry), false);
        assert_eq!(
            text,
            "Plan: hub-deploy (code=USA)\n\nUSA\n  ~ realm dive-usa\n      displayName: old → \
             DIVE USA\n  > service keycloak (local)\n\ndive home\n  + secret ca/authority\n      \
             value: (sensitive)\n\nPlan: 1 to create, 1 to update, 1 to start.\n"
        );
        let coloured = render(&dry, &Summary::of(&dry), true);
        assert!(coloured.contains("\x1b[32m  + secret ca/authority\x1b[0m"));
    }

    #[test]
    fn an_empty_plan_says_so() {
        let dry = plan(vec![]);
        assert!(render(&dry, &Summary::of(&dry), false).contains("No changes"));
        assert_eq!(json!(Summary::of(&dry))["create"], 0);
    }
}
