//! `dive cleanup`: removes what dive created on every runtime — services, containers, volumes,
//! networks, data directories — and nothing else (Docker objects without the `dive.managed=true`
//! label are never touched). It lists what it finds and asks first; the removal is the built-in
//! `cleanup` workflow (a `runtime.cleanup` phase per runtime, lock `cleanup`), so it is recorded
//! and resumable. `--all` then removes stale lock holder rows.

use crate::cli::ExecArgs;
use crate::commands::run::{report_unfinished, run_named, start_named};
use crate::{InvalidInput, database, exit, services};
use anyhow::Result;
use dive_runtime::{Resource, RuntimeKind};
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};

pub async fn cleanup(
    all: bool,
    instance: Option<String>,
    force: bool,
    dry_run: bool,
    json: bool,
) -> Result<u8> {
    let code = match (all, instance) {
        (true, None) => None,
        (false, Some(c)) => Some(c.to_ascii_lowercase()),
        _ => {
            return Err(InvalidInput("say what to clean: --all, or --instance CODE".into()).into());
        }
    };
    if dry_run {
        // The `cleanup` workflow planned: what its `runtime.cleanup` phase would remove.
        let exec = ExecArgs {
            json,
            concurrency: 8,
            runtime: None,
            dry_run: true,
        };
        return run_named("cleanup", &params(code.as_deref()), true, &exec).await;
    }
    if json {
        return Err(InvalidInput("--json goes with --dry-run".into()).into());
    }
    let mut found: Vec<(RuntimeKind, Resource)> = Vec::new();
    for kind in RuntimeKind::all() {
        match services::runtime(kind).await {
            Ok(rt) => {
                let resources = match &code {
                    Some(c) => rt.owned_by(c).await?,
                    None => rt.managed().await?,
                };
                found.extend(resources.into_iter().map(|r| (kind, r)));
            }
            Err(e) => note!("{kind}: skipped ({e:#})"),
        }
    }
    found.sort_by_key(|(_, r)| r.kind.removal_rank());
    if found.is_empty() {
        note!("nothing to remove");
    }
    for (kind, r) in &found {
        note!("  {:<8} {:<9} {}", kind, r.kind, r.name);
    }
    if !found.is_empty() && !force {
        if !std::io::stdin().is_terminal() {
            return Err(InvalidInput(
                "not removing anything without confirmation; add --force".into(),
            )
            .into());
        }
        if !confirm(&format!("remove these {} resources?", found.len()))? {
            note!("nothing removed");
            return Ok(exit::OK);
        }
    }
    let mut rc = exit::OK;
    if !found.is_empty() {
        rc = remove(code.as_deref().unwrap_or_default()).await?;
    }
    if code.is_none() {
        let store = database::open().await?;
        for key in store.clean_locks().await? {
            note!("removed stale lock holder `{key}`");
        }
    }
    Ok(rc)
}

/// Runs the `cleanup` workflow (`instance` empty: everything) and prints what it removed.
async fn remove(instance: &str) -> Result<u8> {
    let params = params(Some(instance));
    let exec = ExecArgs {
        json: false,
        concurrency: 8,
        runtime: None,
        dry_run: false,
    };
    let (engine, outcome) = start_named("cleanup", &params, true, &exec).await?;
    let run = engine.store().load_run(outcome.run_id).await?;
    for phase in &run.phases {
        let Some(out) = &phase.output else { continue };
        for r in out["removed"].as_array().into_iter().flatten() {
            if let Some(r) = r.as_str() {
                note!("removed {r}");
            }
        }
    }
    Ok(if report_unfinished("cleanup", &outcome) {
        exit::OK
    } else {
        exit::RUN_FAILED
    })
}

/// The `cleanup` workflow's parameters (`instance` empty or `None`: everything).
fn params(instance: Option<&str>) -> BTreeMap<String, String> {
    BTreeMap::from([(
        "instance".to_string(),
        instance.unwrap_or_default().to_string(),
    )])
}

/// Asks a yes/no question on the terminal; anything but yes is no.
pub(crate) fn confirm(question: &str) -> Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}
