//! `dive cleanup`: removes what dive created on both runtimes — services, containers, volumes,
//! networks, data directories, stale lock holders — and nothing else (Docker objects without
//! the `dive.managed=true` label are never touched).

use crate::{InvalidInput, database, exit, services};
use anyhow::Result;
use dive_runtime::{Resource, Runtime, RuntimeKind};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;

pub async fn cleanup(all: bool, instance: Option<String>, force: bool) -> Result<u8> {
    let code = match (all, instance) {
        (true, None) => None,
        (false, Some(c)) => Some(c.to_ascii_lowercase()),
        _ => {
            return Err(InvalidInput("say what to clean: --all, or --instance CODE".into()).into());
        }
    };
    let mut found: Vec<(Arc<dyn Runtime>, Resource)> = Vec::new();
    for kind in RuntimeKind::all() {
        match services::runtime(kind).await {
            Ok(rt) => {
                let resources = match &code {
                    Some(c) => rt.owned_by(c).await?,
                    None => rt.managed().await?,
                };
                found.extend(resources.into_iter().map(|r| (rt.clone(), r)));
            }
            Err(e) => eprintln!("{kind}: skipped ({e:#})"),
        }
    }
    found.sort_by_key(|(_, r)| r.kind.removal_rank());
    if found.is_empty() {
        eprintln!("nothing to remove");
    }
    for (rt, r) in &found {
        eprintln!("  {:<8} {:<9} {}", rt.kind(), r.kind, r.name);
    }
    if !found.is_empty() && !force {
        if !std::io::stdin().is_terminal() {
            return Err(InvalidInput(
                "not removing anything without confirmation; add --force".into(),
            )
            .into());
        }
        if !confirm(&format!("remove these {} resources?", found.len()))? {
            eprintln!("nothing removed");
            return Ok(exit::OK);
        }
    }
    let mut failed = 0;
    for (rt, r) in &found {
        match rt.remove_resource(r).await {
            Ok(()) => eprintln!("removed {} {}", r.kind, r.name),
            Err(e) => {
                failed += 1;
                eprintln!("could not remove {} {}: {e}", r.kind, r.name);
            }
        }
    }
    if code.is_none() {
        let store = database::open().await?;
        for key in store.clean_locks().await? {
            eprintln!("removed stale lock holder `{key}`");
        }
    }
    Ok(if failed == 0 {
        exit::OK
    } else {
        exit::RUN_FAILED
    })
}

/// Asks a yes/no question on the terminal; anything but yes is no.
pub(crate) fn confirm(question: &str) -> Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}
