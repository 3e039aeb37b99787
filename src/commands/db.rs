//! `dive db migrate|status|validate|stop`.

use crate::cli::DbCommand;
use crate::commands::print_json;
use crate::commands::secrets::secret_store;
use crate::{config, database, exit};
use anyhow::Result;
use dive_pgcluster::StopMode;
use serde_json::json;

pub async fn db(cmd: DbCommand) -> Result<u8> {
    match cmd {
        DbCommand::Migrate => {
            let store = database::open().await?;
            let applied = store.migration_status().await?;
            note!(
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
        DbCommand::Validate { json } => return validate(json).await,
        DbCommand::Stop => {
            if crate::config::get().database_url.is_some() {
                note!("DIVE_DATABASE_URL is set: dive does not manage that server");
            } else {
                let cluster = database::embedded_cluster();
                if cluster.is_running() {
                    cluster.stop(StopMode::Fast)?;
                    note!(
                        "stopped the embedded cluster in {}",
                        cluster.root().display()
                    );
                } else {
                    note!("the embedded cluster is not running");
                }
            }
        }
    }
    Ok(exit::OK)
}

/// `dive db validate`: the engine's invariants, then references to unregistered instances.
async fn validate(json: bool) -> Result<u8> {
    let store = database::open().await?;
    let mut problems = store.validate().await?;
    let registered: Vec<String> = config::get()
        .instances(&store)
        .list()
        .await?
        .into_iter()
        .map(|r| r.code)
        .collect();
    let unknown = |code: &str| !registered.iter().any(|r| r.eq_ignore_ascii_case(code));
    for (hub, spoke, _, _) in dive_verify::links(store.pool()).await? {
        for code in [&hub, &spoke] {
            if unknown(code) {
                problems.push(format!(
                    "federation link {hub} ↔ {spoke} names {code}, which is not registered"
                ));
            }
        }
    }
    for secret in secret_store(&store)?.list().await? {
        for code in dive_secrets::owners(&secret.name) {
            if unknown(code) {
                problems.push(format!(
                    "secret `{}` belongs to {}, which is not registered",
                    secret.name,
                    code.to_ascii_uppercase()
                ));
            }
        }
    }
    if json {
        print_json(&json!({ "ok": problems.is_empty(), "problems": problems }))?;
    } else if problems.is_empty() {
        println!("state database: no problem found");
    } else {
        for p in &problems {
            println!("{p}");
        }
        note!("{} problem(s) found", problems.len());
    }
    Ok(if problems.is_empty() {
        exit::OK
    } else {
        exit::RUN_FAILED
    })
}
