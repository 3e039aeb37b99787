//! `dive runs list|show [--events]|cancel`.

use crate::cli::RunsCommand;
use crate::commands::print_json;
use crate::{database, exit, output};
use anyhow::Result;
use chrono::{DateTime, Utc};
use dive_engine::PhaseState;
use dive_engine::store::{CancelOutcome, RunRecord};
use serde::Serialize;
use serde_json::json;

pub async fn runs(cmd: RunsCommand) -> Result<u8> {
    let store = database::open().await?;
    match cmd {
        RunsCommand::List { json, limit } => {
            let runs = store.list_runs(limit).await?;
            if json {
                print_json(&runs)?;
            } else {
                print!("{}", output::runs_table(&runs));
            }
        }
        RunsCommand::Show {
            run_id,
            events,
            json,
        } => {
            let run = store.load_run(run_id).await?;
            match (events, json) {
                (true, true) => print_json(&json!({ "run_id": run.id, "events": timeline(&run) }))?,
                (true, false) => {
                    for e in timeline(&run) {
                        let phase = e.phase.map(|p| format!("{p}: ")).unwrap_or_default();
                        println!("{}  {phase}{}", e.at.format("%H:%M:%S%.3f"), e.what);
                    }
                }
                (false, true) => print_json(&run)?,
                (false, false) => print!("{}", output::run_details(&run)),
            }
        }
        RunsCommand::Cancel { run_id } => match store.cancel(run_id).await? {
            CancelOutcome::Requested => {
                note!("cancellation requested; the run's process stops it within a second")
            }
            CancelOutcome::MarkedCancelled => note!(
                "run {run_id} had no live process; marked cancelled (resumable with `dive resume {run_id}`)"
            ),
        },
    }
    Ok(exit::OK)
}

/// One moment of a run's timeline.
#[derive(Serialize)]
struct TimelineEvent {
    at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    phase: Option<String>,
    what: String,
}

/// Everything recorded about `run`, in time order: its start and end, each attempt of each
/// phase (a retry says how long after which failure), compensations, breaker transitions.
fn timeline(run: &RunRecord) -> Vec<TimelineEvent> {
    let mut out = vec![TimelineEvent {
        at: run.started_at,
        phase: None,
        what: format!("run of `{}` started", run.workflow),
    }];
    let mut push = |at: Option<DateTime<Utc>>, phase: &str, what: String| {
        if let Some(at) = at {
            out.push(TimelineEvent {
                at,
                phase: Some(phase.to_string()),
                what,
            });
        }
    };
    for p in &run.phases {
        let mut failed: Option<(DateTime<Utc>, String)> = None;
        for a in &p.history {
            let start = match (&failed, a.started_at) {
                (Some((at, cause)), Some(s)) => format!(
                    "attempt {} started, {:.1}s after attempt {} failed ({cause})",
                    a.attempt,
                    (s - *at).num_milliseconds() as f64 / 1000.0,
                    a.attempt - 1
                ),
                _ => format!("attempt {} started", a.attempt),
            };
            push(a.started_at, &p.id, start);
            let end = match (a.state, &a.error) {
                (PhaseState::Failed, e) => {
                    let cause = e.clone().unwrap_or_else(|| "no error recorded".into());
                    failed = a.finished_at.map(|at| (at, cause.clone()));
                    format!("attempt {} failed: {cause}", a.attempt)
                }
                (state, _) => format!("attempt {} {}", a.attempt, state.as_str()),
            };
            push(a.finished_at, &p.id, end);
        }
        if let Some(c) = &p.compensation {
            push(Some(c.started_at), &p.id, "compensating".into());
            let end = match &c.error {
                Some(e) => format!("compensation {}: {e}", c.state.as_str()),
                None => c.state.as_str().to_string(),
            };
            push(c.finished_at, &p.id, end);
        }
    }
    for b in &run.breaker_events {
        out.push(TimelineEvent {
            at: b.at,
            phase: None,
            what: format!("breaker `{}`: {}", b.breaker, b.transition),
        });
    }
    if let Some(at) = run.finished_at {
        out.push(TimelineEvent {
            at,
            phase: None,
            what: match &run.error {
                Some(e) => format!("run {}: {e}", run.state.as_str()),
                None => format!("run {}", run.state.as_str()),
            },
        });
    }
    out.sort_by_key(|e| e.at);
    out
}
