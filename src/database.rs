//! Where the state database is: DIVE_DATABASE_URL, or the embedded cluster under DIVE_HOME,
//! started on first use and reused afterwards.

use anyhow::{Context, Result};
use dive_engine::Store;
use dive_pgcluster::Cluster;
use sqlx::migrate::Migrator;
use std::path::PathBuf;

const EMBEDDED_DB: &str = "dive";

/// The migrations of the crates that keep tables in the state database, besides the engine's
/// own (which `Store` always applies): they run as one merged set.
pub static MIGRATORS: [&Migrator; 3] = [
    &dive_secrets::MIGRATOR,
    &dive_instances::MIGRATOR,
    &dive_verify::MIGRATOR,
];

/// DIVE_HOME, default ~/.local/share/dive.
pub fn dive_home() -> PathBuf {
    if let Some(h) = std::env::var_os("DIVE_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    home.join(".local/share/dive")
}

pub fn embedded_cluster() -> Cluster {
    Cluster::new(dive_home().join("postgres"))
}

/// The configured database URL, starting the embedded cluster if that is what we use.
pub fn database_url() -> Result<String> {
    if let Ok(url) = std::env::var("DIVE_DATABASE_URL")
        && !url.is_empty()
    {
        return Ok(url);
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
    let url = database_url()?;
    match Store::open_with(&url, &MIGRATORS).await {
        Ok(store) => Ok(store),
        // First use of the embedded cluster: its database does not exist yet.
        Err(e) if std::env::var("DIVE_DATABASE_URL").map_or(true, |u| u.is_empty()) => {
            embedded_cluster()
                .create_database(EMBEDDED_DB)
                .with_context(|| format!("creating the embedded database after: {e}"))?;
            Ok(Store::open_with(&url, &MIGRATORS).await?)
        }
        Err(e) => Err(e).context("opening the state database (DIVE_DATABASE_URL)"),
    }
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
