//! What phases of a run get from the CLI: the secret store and the runtime (`--runtime`).

use crate::commands::secrets::secret_store;
use crate::database;
use anyhow::{Context, Result};
use dive_engine::{Catalog, Services, Store, Workflow, WorkflowCatalog};
use dive_runtime::docker::DockerRuntime;
use dive_runtime::local::LocalRuntime;
use dive_runtime::{Runtime, RuntimeHandle, RuntimeKind};
use std::sync::Arc;

/// The runtime of that kind; Docker is reached (and its API version negotiated) here.
pub async fn runtime(kind: RuntimeKind) -> Result<Arc<dyn Runtime>> {
    Ok(match kind {
        RuntimeKind::Local => Arc::new(LocalRuntime::new(database::dive_home())),
        RuntimeKind::Docker => Arc::new(DockerRuntime::connect().await?),
    })
}

/// Services for a run; the master key is checked against the stored secrets before anything
/// runs, so a wrong key stops the run before it writes anything.
pub async fn build(store: &Store, kind: RuntimeKind) -> Result<Services> {
    let secrets = secret_store(store)?;
    secrets
        .verify_key()
        .await
        .context("checking the master key")?;
    let mut services = Services::default();
    services.insert(secrets);
    services.insert(dive_instances::Instances::new(store.pool().clone()));
    // Child runs (`type: workflow`) need the database and the built-in workflows.
    services.insert(store.clone());
    services.insert(Catalog(Arc::new(BuiltinWorkflows)));
    services.insert(RuntimeHandle(runtime(kind).await?));
    Ok(services)
}

/// The built-in workflows, for child runs.
struct BuiltinWorkflows;

impl WorkflowCatalog for BuiltinWorkflows {
    fn load(&self, name: &str) -> Result<Workflow, String> {
        crate::workflows::builtin()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| format!("no built-in workflow `{name}`"))
            .and_then(|(n, text)| {
                Workflow::parse(&format!("{n} (built-in)"), text).map_err(|e| e.to_string())
            })
    }
}
