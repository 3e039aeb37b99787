//! `dive federation link|unlink CODE`: run the built-in workflows `federation-link` and
//! `federation-unlink` for the registered hub and spoke CODE. The code, the spoke's registration
//! and the hub's are checked before anything runs (exit 2).

use crate::cli::ExecArgs;
use crate::commands::run::run_named;
use crate::{InvalidInput, config, database};
use anyhow::Result;
use dive_instances::{InstanceRecord, NO_HUB, Role, normalize_code};
use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};

/// The spoke `code` and the hub, both registered; `exec.runtime` defaults to the spoke's.
pub(crate) async fn pair(
    code: &str,
    exec: &mut ExecArgs,
) -> Result<(InstanceRecord, InstanceRecord)> {
    let code = normalize_code(code).map_err(InvalidInput)?;
    let store = database::open_for(exec.dry_run).await?;
    let registry = config::get().instances(&store);
    let hub = registry
        .hub()
        .await?
        .ok_or_else(|| InvalidInput(NO_HUB.into()))?;
    let spoke = registry.get(&code).await?.ok_or_else(|| {
        InvalidInput(format!(
            "instance {code} is not deployed: run `dive spoke deploy {code}` first"
        ))
    })?;
    if spoke.role == Role::Hub {
        return Err(InvalidInput(format!(
            "{code} is the hub: federation links the hub with a spoke (give the spoke's code)"
        ))
        .into());
    }
    if exec.runtime.is_none() {
        exec.runtime = Some(spoke.runtime);
    }
    Ok((hub, spoke))
}

/// What a command that runs a federation workflow itself (and reports in its own format) needs:
/// the hub, the spoke `code`, run settings on the spoke's runtime, and the workflow parameters.
pub(crate) struct Federated {
    pub hub: InstanceRecord,
    pub spoke: InstanceRecord,
    pub exec: ExecArgs,
    pub params: BTreeMap<String, String>,
}

pub(crate) async fn federated(code: &str) -> Result<Federated> {
    let mut exec = ExecArgs {
        json: false,
        concurrency: 8,
        runtime: None,
        dry_run: false,
    };
    let (hub, spoke) = pair(code, &mut exec).await?;
    let params = params(&hub, &spoke);
    Ok(Federated {
        hub,
        spoke,
        exec,
        params,
    })
}

fn params(hub: &InstanceRecord, spoke: &InstanceRecord) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("code".to_string(), spoke.code.clone()),
        ("hub".to_string(), hub.code.clone()),
    ])
}

pub async fn link(code: &str, mut exec: ExecArgs) -> Result<u8> {
    let (hub, spoke) = pair(code, &mut exec).await?;
    run_named("federation-link", &params(&hub, &spoke), false, &exec).await
}

pub async fn unlink(code: &str, yes: bool, mut exec: ExecArgs) -> Result<u8> {
    let upper = normalize_code(code).map_err(InvalidInput)?;
    // A plan removes nothing: nothing to confirm.
    let yes = yes || exec.dry_run;
    if !yes && !std::io::stdin().is_terminal() {
        return Err(InvalidInput(format!(
            "unlink removes the federation between the hub and {upper} and its secrets: add \
             --yes to confirm (there is no terminal to ask on)"
        ))
        .into());
    }
    let (hub, spoke) = pair(code, &mut exec).await?;
    if !yes
        && !confirm(&format!(
            "Remove the federation between {} and {} in both directions?",
            hub.code, spoke.code
        ))?
    {
        note!("nothing removed");
        return Ok(crate::exit::OK);
    }
    run_named("federation-unlink", &params(&hub, &spoke), false, &exec).await
}

fn confirm(question: &str) -> Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}
