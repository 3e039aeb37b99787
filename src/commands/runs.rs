//! `dive runs list|show|cancel`.

use crate::cli::RunsCommand;
use crate::commands::print_json;
use crate::{database, exit, output};
use anyhow::Result;
use dive_engine::store::CancelOutcome;

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
        RunsCommand::Show { run_id, json } => {
            let run = store.load_run(run_id).await?;
            if json {
                print_json(&run)?;
            } else {
                print!("{}", output::run_details(&run));
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
