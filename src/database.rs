//! Where the state database is: DIVE_DATABASE_URL, or the embedded cluster under DIVE_HOME,
//! started on first use and reused afterwards.

use crate::config;
use anyhow::{Context, Result};
use dive_engine::Store;
use dive_pgcluster::Cluster;
use sqlx::migrate::Migrator;

const EMBEDDED_DB: &str = "dive";

/// The migrations of the crates that keep tables in the state database, besides the engine's
/// own (which `Store` always applies): they run as one merged set.
pub static MIGRATORS: [&Migrator; 3] = [
    &dive_secrets::MIGRATOR,
    &dive_instances::MIGRATOR,
    &dive_verify::MIGRATOR,
];

pub fn embedded_cluster() -> Cluster {
    Cluster::new(config::get().home().join("postgres"))
}

/// The configured database URL, starting the embedded cluster if that is what we use.
pub fn database_url() -> Result<String> {
    if let Some(url) = &config::get().database_url {
        return Ok(url.clone());
    }
    let cluster = embedded_cluster();
    cluster.ensure_running().with_context(|| {
        format!(
            "starting the embedded PostgreSQL cluster in {}",
            cluster.root().display()
        )
    })?;
    Ok(cluster.url(EMBEDDED_DB)?)
}

/// Opens the state database and applies migrations (the engine's and [`MIGRATORS`]).
pub async fn open() -> Result<Store> {
    config::get().ensure_home()?;
    let url = database_url()?;
    match Store::open_with(&url, &MIGRATORS).await {
        Ok(store) => Ok(store),
        // First use of the embedded cluster: its database does not exist yet.
        Err(e) if config::get().database_url.is_none() => {
            embedded_cluster()
                .create_database(EMBEDDED_DB)
                .with_context(|| format!("creating the embedded database after: {e}"))?;
            Ok(Store::open_with(&url, &MIGRATORS).await?)
        }
        Err(e) => Err(e).context("opening the state database (DIVE_DATABASE_URL)"),
    }
}

/// The state database for a dry run: like [`open`], but the dive home is not created. With
/// `DIVE_DATABASE_URL` nothing but the schema is ever written; the embedded database is
/// started (and on first use created) as for any command, being dive's own bookkeeping.
pub async fn open_for_plan() -> Result<Store> {
    if config::get().database_url.is_none() {
        return open().await;
    }
    let url = database_url()?;
    Store::open_with(&url, &MIGRATORS)
        .await
        .context("opening the state database (DIVE_DATABASE_URL)")
}

/// The URL without its password, for display.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
