//! `dive run workflow` and `dive resume`.

use crate::cli::{ExecArgs, RunCommand};
use crate::commands::{parse_params, print_json};
use crate::{InvalidInput, database, exit, progress, services, workflows};
use anyhow::Result;
use dive_engine::{Engine, Plan, RunOptions, RunOutcome, RunState};
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub async fn run(cmd: RunCommand) -> Result<u8> {
    let RunCommand::Workflow {
        workflow,
        params,
        no_rollback,
        exec,
    } = cmd;
    let params = parse_params(&params)?;
    run_named(&workflow, &params, no_rollback, &exec).await
}

/// Runs a workflow (built-in name or file path) with parameters, exactly as `dive run workflow`
/// does; returns the exit code. Used by `dive hub|spoke deploy|up` too.
pub async fn run_named(
    workflow: &str,
    params: &BTreeMap<String, String>,
    no_rollback: bool,
    exec: &ExecArgs,
) -> Result<u8> {
    if exec.dry_run {
        let (plan, kind) = load_plan(workflow, params, exec)?;
        return crate::commands::dry_run::dry_run(&plan, kind, exec.json).await;
    }
    let (engine, outcome) = start_named(workflow, params, no_rollback, exec).await?;
    finish(&engine, exec, outcome).await
}

/// Runs a workflow with the live progress view on stderr and returns its outcome without
/// printing it: for commands that report in their own format (`dive federation verify`).
pub async fn start_named(
    workflow: &str,
    params: &BTreeMap<String, String>,
    no_rollback: bool,
    exec: &ExecArgs,
) -> Result<(Engine, RunOutcome)> {
    if exec.dry_run {
        return Err(InvalidInput(format!(
            "{workflow} changes nothing to plan: --dry-run is for the commands that change \
             something (deploy, link, unlink, rotate, run workflow)"
        ))
        .into());
    }
    let (plan, kind) = load_plan(workflow, params, exec)?;
    let store = database::open().await?;
    let engine = services::engine(&store, kind).await?;
    let outcome = execute(&engine, exec, no_rollback, Target::Start(&plan)).await?;
    Ok((engine, outcome))
}

/// The plan of a workflow on the runtime `exec` names. Everything is checked before the
/// database is touched: invalid input writes nothing.
fn load_plan(
    workflow: &str,
    params: &BTreeMap<String, String>,
    exec: &ExecArgs,
) -> Result<(Plan, dive_runtime::RuntimeKind)> {
    let mut plan = workflows::load(workflow)?.plan(params)?;
    let kind = exec.runtime.unwrap_or_default();
    plan.context.insert(RUNTIME.into(), kind.to_string());
    Ok((plan, kind))
}

/// The plan context key that records the runtime, so a resume uses the same one.
const RUNTIME: &str = "runtime";

pub async fn resume(run_id: Uuid, exec: ExecArgs) -> Result<u8> {
    if exec.dry_run {
        return Err(InvalidInput(
            "--dry-run plans a new run; a resume finishes one that started (`dive runs show RUN` \
             shows where it stopped)"
                .into(),
        )
        .into());
    }
    let store = database::open().await?;
    let record = store.load_run(run_id).await?;
    let kind = match record.plan.context.get(RUNTIME) {
        Some(k) => k.parse().map_err(|e: String| InvalidInput(e))?,
        None => exec.runtime.unwrap_or_default(),
    };
    if exec.runtime.is_some_and(|r| r != kind) {
        return Err(InvalidInput(format!(
            "run {run_id} started on the {kind} runtime; it resumes there (drop --runtime)"
        ))
        .into());
    }
    let engine = services::engine(&store, kind).await?;
    let outcome = execute(&engine, &exec, false, Target::Resume(run_id)).await?;
    finish(&engine, &exec, outcome).await
}

enum Target<'p> {
    Start(&'p Plan),
    Resume(Uuid),
}

async fn execute(
    engine: &Engine,
    exec: &ExecArgs,
    no_rollback: bool,
    target: Target<'_>,
) -> Result<RunOutcome> {
    let (events, view) = progress::start();
    let cancel = CancellationToken::new();
    tokio::spawn(watch_signals(cancel.clone()));
    let opts = RunOptions {
        concurrency: exec.concurrency as usize,
        no_rollback,
        events,
        cancel,
        ..RunOptions::default()
    };
    let outcome = match target {
        Target::Start(plan) => engine.start(plan, &opts).await,
        Target::Resume(id) => engine.resume(id, &opts).await,
    };
    drop(opts);
    let _ = view.await;
    Ok(outcome?)
}

/// Prints the run (`--json`) and how to resume it; returns the exit code.
/// For a command that prints its own result: says on stderr why the run did not succeed and,
/// when it can be, how to finish it. Returns whether it succeeded.
pub fn report_unfinished(workflow: &str, outcome: &RunOutcome) -> bool {
    if outcome.state == RunState::Succeeded {
        return true;
    }
    note!(
        "error: {workflow} run {} {}: {}",
        outcome.run_id,
        outcome.state,
        outcome
            .error
            .as_deref()
            .unwrap_or("stopped before all phases succeeded")
    );
    if outcome.state.is_resumable() {
        note!("resume it with: dive resume {}", outcome.run_id);
    }
    false
}

async fn finish(engine: &Engine, exec: &ExecArgs, outcome: RunOutcome) -> Result<u8> {
    if exec.json {
        print_json(&engine.store().load_run(outcome.run_id).await?)?;
    }
    if outcome.state == RunState::Succeeded {
        return Ok(exit::OK);
    }
    if outcome.state.is_resumable() {
        note!("resume it with: dive resume {}", outcome.run_id);
    }
    Ok(exit::RUN_FAILED)
}

/// First Ctrl-C or SIGTERM cancels the run cleanly; a second one exits at once.
async fn watch_signals(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    let Ok(mut int) = signal(SignalKind::interrupt()) else {
        return;
    };
    for round in 0.. {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if round > 0 {
            note!("second interrupt: exiting now; the run stays resumable");
            std::process::exit(130);
        }
        note!("interrupt: stopping the run (press Ctrl-C again to exit at once)");
        cancel.cancel();
    }
}
