//! `dive db migrate|status|stop`.

use crate::cli::DbCommand;
use crate::commands::print_json;
use crate::{database, exit};
use anyhow::Result;
use dive_pgcluster::StopMode;
use serde_json::json;

pub async fn db(cmd: DbCommand) -> Result<u8> {
    match cmd {
        DbCommand::Migrate => {
            let store = database::open().await?;
            let applied = store.migration_status().await?;
            eprintln!(
                "state database up to date ({} migrations) at {}",
                applied.len(),
                database::redact(store.url())
            );
        }
        DbCommand::Status { json } => {
            let store = database::open().await?;
            let migrations = store.migration_status().await?;
            let counts = store.counts().await?;
            let embedded = crate::config::get().database_url.is_none();
            if json {
                print_json(&json!({
                    "url": database::redact(store.url()),
                    "embedded": embedded,
                    "cluster": embedded.then(|| database::embedded_cluster().root().display().to_string()),
                    "migrations": migrations,
                    "runs": counts.iter().map(|(s, n)| (s.clone(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
                }))?;
            } else {
                println!("database  {}", database::redact(store.url()));
                if embedded {
                    println!(
                        "cluster   {} (embedded)",
                        database::embedded_cluster().root().display()
                    );
                }
                for m in &migrations {
                    println!(
                        "migration {:>4} {:<24} {}",
                        m.version,
                        m.description,
                        if m.applied { "applied" } else { "pending" }
                    );
                }
                for (state, n) in &counts {
                    println!("runs      {state:<16} {n}");
                }
            }
        }
        DbCommand::Stop => {
            if crate::config::get().database_url.is_some() {
                eprintln!("DIVE_DATABASE_URL is set: dive does not manage that server");
            } else {
                let cluster = database::embedded_cluster();
                if cluster.is_running() {
                    cluster.stop(StopMode::Fast)?;
                    eprintln!(
                        "stopped the embedded cluster in {}",
                        cluster.root().display()
                    );
                } else {
                    eprintln!("the embedded cluster is not running");
                }
            }
        }
    }
    Ok(exit::OK)
}
