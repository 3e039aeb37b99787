//! One function per command; each returns the process exit code.

pub(crate) mod bench;
mod bench_metrics;
mod chaos;
pub(crate) mod cleanup;
mod db;
mod dry_run;
mod federation_drift;
mod federation_link;
pub(crate) mod federation_verify;
pub(crate) mod instance;
mod locks;
mod run;
mod runs;
pub mod secrets;
mod serve;
mod status;
mod workflow;

use crate::InvalidInput;
use crate::cli::{CaCommand, Command, FederationCommand};
use anyhow::Result;
use std::collections::BTreeMap;

pub async fn dispatch(command: Command) -> Result<u8> {
    match command {
        Command::Run(cmd) => run::run(cmd).await,
        Command::Resume { run_id, exec } => run::resume(run_id, exec).await,
        Command::Runs(cmd) => runs::runs(cmd).await,
        Command::Workflow(cmd) => workflow::workflow(cmd),
        Command::Db(cmd) => db::db(cmd).await,
        Command::Locks(cmd) => locks::locks(cmd).await,
        Command::Bench(cmd) => bench::bench(cmd).await,
        Command::Chaos(cmd) => chaos::chaos(cmd).await,
        Command::Federation(cmd) => match cmd {
            FederationCommand::Link { code, exec } => federation_link::link(&code, exec).await,
            FederationCommand::Unlink { code, yes, exec } => {
                federation_link::unlink(&code, yes, exec).await
            }
            FederationCommand::Verify { code, json } => {
                federation_verify::verify(&code, json).await
            }
            FederationCommand::Status { json } => federation_verify::status(json).await,
            FederationCommand::Drift { code, json } => federation_drift::drift(&code, json).await,
        },
        Command::Cleanup {
            all,
            instance,
            force,
            dry_run,
            json,
        } => cleanup::cleanup(all, instance, force, dry_run, json).await,
        Command::Secrets(cmd) => secrets::secrets(cmd).await,
        Command::Ca(CaCommand::Show { json }) => secrets::ca_show(json).await,
        Command::Status { json } => status::status(json).await,
        Command::Serve { listen, heartbeat } => serve::serve(&listen, &heartbeat).await,
        Command::Hub(cmd) => instance::hub(cmd).await,
        Command::Spoke(cmd) => instance::spoke(cmd).await,
    }
}

/// `--param k=v` arguments as a map; a malformed or repeated one is invalid input.
pub fn parse_params(raw: &[String]) -> Result<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    for item in raw {
        let Some((k, v)) = item.split_once('=') else {
            return Err(InvalidInput(format!("--param `{item}`: expected KEY=VALUE")).into());
        };
        if params.insert(k.trim().to_string(), v.to_string()).is_some() {
            return Err(InvalidInput(format!("--param `{k}` given twice")).into());
        }
    }
    Ok(params)
}

/// Prints `value` as one JSON document on stdout.
pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
