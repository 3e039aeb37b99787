//! Where the state database is: DIVE_DATABASE_URL, or the embedded cluster under DIVE_HOME,
//! started on first use and reused afterwards.

use crate::config;
use anyhow::{Context, Result};
use dive_engine::Store;
use dive_pgcluster::{Cluster, StopMode};
use sqlx::migrate::Migrator;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;

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

/// The state database for a dry run, which changes nothing: the dive home is not created and
/// no server is left running that was not. With `DIVE_DATABASE_URL` nothing but the schema is
/// written. The embedded cluster, when it exists, is read (started for the plan and stopped
/// again by [`close_plan`] if it was stopped); on a fresh home the plan reads a scratch cluster
/// in a temporary directory, removed by [`close_plan`] — an empty state database, as a fresh
/// home has. Opened once per process: a command's checks and its plan read the same database.
pub async fn open_for_plan() -> Result<Store> {
    PLAN_DB.get_or_try_init(open_plan_db).await.cloned()
}

/// [`open_for_plan`] for a dry run, [`open`] otherwise.
pub async fn open_for(dry_run: bool) -> Result<Store> {
    if dry_run {
        open_for_plan().await
    } else {
        open().await
    }
}

/// Ends a dry run's use of the state database: closes it and stops (or removes) the cluster
/// [`open_for_plan`] started. `main` calls it when any command ends; nothing to do otherwise.
pub async fn close_plan() {
    if let Some(store) = PLAN_DB.get() {
        store.pool().close().await;
    }
    let cluster = PLAN_CLUSTER
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    drop(cluster);
}

static PLAN_DB: tokio::sync::OnceCell<Store> = tokio::sync::OnceCell::const_new();
static PLAN_CLUSTER: Mutex<Option<PlanCluster>> = Mutex::new(None);

async fn open_plan_db() -> Result<Store> {
    if config::get().database_url.is_some() {
        let url = database_url()?;
        return Store::open_with(&url, &MIGRATORS)
            .await
            .context("opening the state database (DIVE_DATABASE_URL)");
    }
    let home = embedded_cluster();
    let guard = if home.data_dir().join("PG_VERSION").is_file() {
        if home.is_running() {
            return open().await;
        }
        home.start().with_context(|| {
            format!(
                "starting the embedded PostgreSQL cluster in {}",
                home.root().display()
            )
        })?;
        PlanCluster {
            cluster: home,
            scratch: None,
        }
    } else {
        let dir = tempfile::Builder::new()
            .prefix("dive-plan-")
            .tempdir()
            .context("creating a scratch directory for the plan's state database")?;
        // The server may run as an unprivileged user, who must reach the cluster's directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} readable", dir.path().display()))?;
        let guard = PlanCluster {
            cluster: Cluster::new(dir.path().join("postgres")),
            scratch: Some(dir),
        };
        guard.cluster.ensure_running().with_context(|| {
            format!(
                "starting a scratch PostgreSQL cluster in {}",
                guard.cluster.root().display()
            )
        })?;
        guard.cluster.create_database(EMBEDDED_DB)?;
        guard
    };
    let url = guard.cluster.url(EMBEDDED_DB)?;
    let store = Store::open_with(&url, &MIGRATORS).await;
    *PLAN_CLUSTER.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    store.context("opening the state database for the plan")
}

/// A cluster a dry run started, stopped again when the plan is done (and removed, when it was
/// a scratch one).
struct PlanCluster {
    cluster: Cluster,
    scratch: Option<tempfile::TempDir>,
}

impl Drop for PlanCluster {
    fn drop(&mut self) {
        let mode = if self.scratch.is_some() {
            StopMode::Immediate
        } else {
            StopMode::Fast
        };
        if let Err(e) = self.cluster.stop(mode) {
            tracing::warn!(
                "stopping the PostgreSQL cluster in {} after the plan: {e}",
                self.cluster.root().display()
            );
        }
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
