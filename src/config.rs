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
    /// `DIVE_CERT_LIFETIME`: how long an instance certificate is valid (default 90 days; at
    /// least a day, at most five years).
    pub cert_lifetime: std::time::Duration,
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

/// A certificate lifetime such as `90d` or `8760h`.
fn parse_lifetime(v: &str) -> Result<std::time::Duration> {
    let d = humantime::parse_duration(v).map_err(|e| {
        InvalidInput(format!(
            "DIVE_CERT_LIFETIME `{v}`: expected a duration such as 90d or 2160h ({e})"
        ))
    })?;
    let (min, max) = (86_400, 5 * 365 * 86_400);
    if !(min..=max).contains(&d.as_secs()) {
        return Err(InvalidInput(format!(
            "DIVE_CERT_LIFETIME `{v}`: must be between 1 day and 5 years"
        ))
        .into());
    }
    Ok(d)
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
                // Set once the secret store is open: the CA lives there.
                trust: None,
            },
            cert_lifetime: match var("DIVE_CERT_LIFETIME") {
                Some(v) => parse_lifetime(&v)?,
                None => dive_tls::DEFAULT_LIFETIME,
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

    /// Creates `DIVE_HOME` if needed and keeps it private: it holds the master key, the embedded
    /// cluster and the files each local service reads its secrets from. Mode 0700; when dive
    /// runs as root and starts services as their own users (PostgreSQL as `postgres`), those
    /// users may pass through it to their own directories (o+x) but never list or read it.
    pub fn ensure_home(&self) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let home = self.home();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home)
            .map_err(|e| anyhow::anyhow!("creating DIVE_HOME {}: {e}", home.display()))?;
        let mode = std::fs::metadata(home)?.permissions().mode() & 0o777;
        let private = mode & 0o700 | mode & 0o001;
        if mode != private {
            std::fs::set_permissions(home, std::fs::Permissions::from_mode(private)).map_err(
                |e| {
                    anyhow::anyhow!(
                        "making DIVE_HOME {} private (chmod 700): {e}",
                        home.display()
                    )
                },
            )?;
        }
        Ok(())
    }

    /// The master key: `DIVE_MASTER_KEY`, else `DIVE_HOME/master.key` (created 0600 on first use).
    pub fn master_key(&self) -> Result<MasterKey, dive_secrets::SecretError> {
        MasterKey::load_from(
            self.master_key.as_deref(),
            &self.home().join(MASTER_KEY_FILE),
        )
    }

    /// The master key for a dry run: as [`Config::master_key`] finds it, or — on a home that
    /// has none yet — a key in memory only, so that nothing is written.
    pub fn master_key_for_plan(&self) -> Result<MasterKey, dive_secrets::SecretError> {
        let file = self.home().join(MASTER_KEY_FILE);
        match MasterKey::read(self.master_key.as_deref(), &file)? {
            Some(key) => Ok(key),
            // As a run would make it: a store that already holds secrets refuses it, naming
            // the missing file.
            None => MasterKey::from_base64(
                &MasterKey::generate().to_base64(),
                dive_secrets::KeySource::Created(file),
            ),
        }
    }

    /// The instance registry in the state database, with the configured port base.
    pub fn instances(&self, store: &Store) -> Instances {
        Instances::with_port_base(store.pool().clone(), self.port_base)
            .expect("the port base was checked by config::init")
    }
}
