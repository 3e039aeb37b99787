//! The engine a run executes on: the built-in workflows for child runs, and the services its
//! phases use, built once from the configuration for the run's runtime (`--runtime`).

use crate::commands::secrets::classify;
use crate::{config, workflows};
use anyhow::{Context, Result};
use dive_engine::{Engine, Store, Workflow, WorkflowCatalog};
use dive_phases::rotation::LinkedInstances;
use dive_phases::{Config, Services};
use dive_runtime::{Runtime, RuntimeKind};
use std::sync::Arc;

/// The runtime of that kind, as configured; Docker is reached (and its API version negotiated)
/// here.
pub async fn runtime(kind: RuntimeKind) -> Result<Arc<dyn Runtime>> {
    Ok(kind.connect(&config::get().runtimes).await?)
}

/// An engine for runs on `kind`: the master key is checked against the stored secrets and the
/// runtime reached before anything runs, so a wrong key or a stopped Docker engine stops the run
/// before it writes anything.
pub async fn engine(store: &Store, kind: RuntimeKind) -> Result<Engine> {
    let cfg = config::get();
    let master_key = cfg.master_key().map_err(classify)?;
    let services = Services::build(phase_config(kind, master_key), store.pool())
        .await
        .context("preparing the run")?;
    Ok(with_services(store, services))
}

/// An engine for dry runs on `kind`: built like [`engine`], but nothing is written — no master
/// key file, no CA (`Services::build_for_plan`).
pub async fn plan_engine(store: &Store, kind: RuntimeKind) -> Result<Engine> {
    let master_key = config::get().master_key_for_plan().map_err(classify)?;
    let services = Services::build_for_plan(phase_config(kind, master_key), store.pool())
        .await
        .context("preparing the plan")?;
    Ok(with_services(store, services))
}

fn phase_config(kind: RuntimeKind, master_key: dive_secrets::MasterKey) -> Config {
    let cfg = config::get();
    Config {
        runtime: kind,
        runtimes: cfg.runtimes.clone(),
        port_base: cfg.port_base,
        master_key,
        cert_lifetime: cfg.cert_lifetime,
    }
}

fn with_services(store: &Store, services: Services) -> Engine {
    Engine::new(store.clone())
        .with_catalog(Arc::new(BuiltinWorkflows))
        .with_services(Arc::new(services))
        .with_lock_expander(Arc::new(LinkedInstances {
            pool: store.pool().clone(),
        }))
}

/// The built-in workflows, for child runs.
struct BuiltinWorkflows;

impl WorkflowCatalog for BuiltinWorkflows {
    fn load(&self, name: &str) -> Result<Workflow, String> {
        workflows::load_builtin(name)
            .ok_or_else(|| format!("no built-in workflow `{name}`"))?
            .map_err(|e| e.to_string())
    }
}
