//! What dive's phase types work with — the secret store, the instance registry, the run's
//! runtime — built once at start-up from one [`Config`] and reached through typed accessors.
//! The engine carries it without knowing its type (`Engine::with_services`); a phase reads it
//! with [`Services::of`]. Nothing in the phase types reads the environment: the CLI reads flags
//! and environment into the [`Config`].

use crate::tls::CaError;
use dive_engine::{PhaseContext, PhaseError};
use dive_instances::{InstanceError, Instances};
use dive_runtime::{Runtime, RuntimeConfig, RuntimeError, RuntimeKind};
use dive_secrets::{MasterKey, SecretError, SecretStore};
use dive_tls::{Authority, Trust};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// Everything the services are built from.
pub struct Config {
    /// The runtime the run's services go to (`--runtime`).
    pub runtime: RuntimeKind,
    /// How runtimes are set up (home, Keycloak distribution and image).
    pub runtimes: RuntimeConfig,
    /// First port of the instances' port blocks.
    pub port_base: u16,
    /// The key the secret store encrypts with.
    pub master_key: MasterKey,
    /// How long an instance certificate is valid (`--cert-lifetime`).
    pub cert_lifetime: Duration,
}

impl Config {
    /// `runtime` set up as `runtimes`, secrets under `master_key`, the default port base.
    pub fn new(runtime: RuntimeKind, runtimes: RuntimeConfig, master_key: MasterKey) -> Config {
        Config {
            runtime,
            runtimes,
            port_base: dive_instances::DEFAULT_PORT_BASE,
            master_key,
            cert_lifetime: dive_tls::DEFAULT_LIFETIME,
        }
    }
}

/// Why the services could not be built; nothing has run yet.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("secret store: {0}")]
    Secrets(#[from] SecretError),
    #[error("local CA: {0}")]
    Authority(#[from] CaError),
    #[error("instance registry: {0}")]
    Instances(#[from] InstanceError),
    #[error("runtime {kind}: {source}")]
    Runtime {
        kind: RuntimeKind,
        source: RuntimeError,
    },
}

/// The services of a run.
pub struct Services {
    secrets: SecretStore,
    instances: Instances,
    runtime: Arc<dyn Runtime>,
    /// How the other runtimes are reached ([`Services::connect`]).
    runtimes: RuntimeConfig,
    authority: Authority,
    /// Whether the CA exists only for a dry run: a real run would create (and store) it.
    authority_planned: bool,
    trust: Trust,
    cert_lifetime: Duration,
}

impl Services {
    /// Connects the runtime and checks the master key against the stored secrets, so a wrong
    /// key or an unreachable Docker engine stops the run before it writes anything.
    /// The dive home's CA is created here on first use, and every runtime's health checks trust it.
    pub async fn build(config: Config, pool: &PgPool) -> Result<Services, StartupError> {
        Self::build_with(config, pool, false).await
    }

    /// Like [`Services::build`] for a dry run: nothing is written — a CA that does not exist
    /// yet is made in memory only (and `tls.certificate` plans its creation).
    pub async fn build_for_plan(config: Config, pool: &PgPool) -> Result<Services, StartupError> {
        Self::build_with(config, pool, true).await
    }

    async fn build_with(
        mut config: Config,
        pool: &PgPool,
        dry_run: bool,
    ) -> Result<Services, StartupError> {
        let secrets = SecretStore::new(pool.clone(), config.master_key);
        if dry_run {
            secrets.verify_key_read_only().await?;
        } else {
            secrets.verify_key().await?;
        }
        let existing = crate::tls::existing_authority(&secrets).await?;
        let authority_planned = existing.is_none() && dry_run;
        let authority = match existing {
            Some(authority) => authority,
            None if dry_run => crate::tls::new_authority()?,
            None => crate::tls::authority(&secrets).await?,
        };
        config.runtimes.trust = Some(authority.trust());
        let instances = Instances::with_port_base(pool.clone(), config.port_base)?;
        let runtime = config
            .runtime
            .connect(&config.runtimes)
            .await
            .map_err(|source| StartupError::Runtime {
                kind: config.runtime,
                source,
            })?;
        Ok(Services {
            secrets,
            instances,
            runtime,
            runtimes: config.runtimes,
            trust: authority.trust(),
            authority,
            authority_planned,
            cert_lifetime: config.cert_lifetime,
        })
    }

    /// The services of the run `ctx` belongs to.
    pub fn of(ctx: &PhaseContext) -> Result<&Services, PhaseError> {
        ctx.services::<Services>()
    }

    pub fn secrets(&self) -> &SecretStore {
        &self.secrets
    }

    /// The dive home's certificate authority.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Whether the CA would be created by the run (a dry run on a new dive home).
    pub fn authority_planned(&self) -> bool {
        self.authority_planned
    }

    /// What dive's clients trust: the dive CA only.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// How long a new instance certificate is valid.
    pub fn cert_lifetime(&self) -> Duration {
        self.cert_lifetime
    }

    pub fn instances(&self) -> &Instances {
        &self.instances
    }

    /// The state database (federation links and verifications are recorded there).
    pub fn pool(&self) -> &PgPool {
        self.instances.pool()
    }

    /// The runtime the run's services go to.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// A runtime of any kind, as configured: the run's own, or another one connected now (for
    /// phases that act on every runtime, `runtime.cleanup`). Docker is reached here, so an
    /// unreachable engine is an error the phase can report.
    pub async fn connect(&self, kind: RuntimeKind) -> Result<Arc<dyn Runtime>, RuntimeError> {
        if kind == self.runtime.kind() {
            return Ok(self.runtime.clone());
        }
        kind.connect(&self.runtimes).await
    }
}

/// `run:<id>`: what marks the secret versions a run minted or created (see
/// `dive_secrets::SecretStore::minted_by`), so its compensation knows them as its own.
pub(crate) fn origin(ctx: &PhaseContext) -> String {
    format!("run:{}", ctx.run_id)
}
