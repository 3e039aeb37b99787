//! dive's configuration, read once from the environment (flags override it per command). The
//! only place that reads dive's environment variables; everything below the CLI is given values.

use crate::InvalidInput;
use anyhow::Result;
use dive_engine::Store;
use dive_instances::{DEFAULT_PORT_BASE, Instances};
use dive_runtime::{KeycloakDist, RuntimeConfig};
use dive_secrets::{MASTER_KEY_ENV, MASTER_KEY_FILE, MasterKey};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// What the environment says, checked.
#[derive(Debug)]
pub struct Config {
    /// How the runtimes are set up: `DIVE_HOME` (default `~/.local/share/dive`: also the
    /// embedded cluster and the master key), `DIVE_CACHE` (default `~/.cache/dive`),
    /// `DIVE_KEYCLOAK_VERSION`, `DIVE_KEYCLOAK_IMAGE`.
    pub runtimes: RuntimeConfig,
    /// `DIVE_DATABASE_URL`: a PostgreSQL to use instead of the embedded cluster.
    pub database_url: Option<String>,
    /// `DIVE_PORT_BASE`, default 20000.
    pub port_base: u16,
    /// `DIVE_MASTER_KEY`, when set: the key as standard base64 (else `DIVE_HOME/master.key`).
    master_key: Option<String>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// Reads the environment once; a malformed value is invalid input (exit 2) before anything runs.
pub fn init() -> Result<()> {
    if CONFIG.get().is_none() {
        let _ = CONFIG.set(Config::from_env()?);
    }
    Ok(())
}

/// The configuration read by [`init`] at start-up.
pub fn get() -> &'static Config {
    CONFIG.get().expect("config::init runs before any command")
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into())
}

impl Config {
    fn from_env() -> Result<Config> {
        let port_base = match var("DIVE_PORT_BASE") {
            Some(v) => Instances::parse_port_base(&v).map_err(|e| InvalidInput(e.to_string()))?,
            None => DEFAULT_PORT_BASE,
        };
        let mut keycloak = KeycloakDist::new(
            var("DIVE_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| home_dir().join(".cache/dive")),
        );
        if let Some(v) = var("DIVE_KEYCLOAK_VERSION") {
            keycloak.version = v;
        }
        Ok(Config {
            runtimes: RuntimeConfig {
                home: var("DIVE_HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| home_dir().join(".local/share/dive")),
                keycloak,
                keycloak_image: var("DIVE_KEYCLOAK_IMAGE"),
            },
            database_url: var("DIVE_DATABASE_URL"),
            port_base,
            master_key: std::env::var(MASTER_KEY_ENV).ok(),
        })
    }

    /// `DIVE_HOME`.
    pub fn home(&self) -> &Path {
        &self.runtimes.home
    }

    /// The master key: `DIVE_MASTER_KEY`, else `DIVE_HOME/master.key` (created 0600 on first use).
    pub fn master_key(&self) -> Result<MasterKey, dive_secrets::SecretError> {
        MasterKey::load_from(
            self.master_key.as_deref(),
            &self.home().join(MASTER_KEY_FILE),
        )
    }

    /// The instance registry in the state database, with the configured port base.
    pub fn instances(&self, store: &Store) -> Instances {
        Instances::with_port_base(store.pool().clone(), self.port_base)
            .expect("the port base was checked by config::init")
    }
}
