//! `instance.remove`: removes an instance's services with their data from the run's runtime,
//! then every other resource the runtime lists as the instance's (`Runtime::owned_by`: its
//! network, volumes, data directory, services that are not the usual two).
//!
//! ```yaml
//! - id: remove
//!   type: instance.remove
//!   code: ${params.code}     # ISO 3166-1 alpha-3, any case
//! ```
//! Output `{code, code_lower, runtime, services: ["keycloak", "postgres"], resources: ["network dive-fra",
//! …]}`: the services removed (with their data) and the leftovers, each as `kind name`.
//!
//! Precheck: a registered instance is on the run's runtime (removing it elsewhere would remove
//! nothing and a later `instance.unregister` would orphan its services). An unregistered one is
//! fine: its leftovers are cleaned up.
//!
//! Idempotency: what is already gone is success; a second run removes nothing and lists
//! nothing. Compensation: none — what was removed cannot be brought back (a deploy creates the
//! instance anew).

use super::{code_of, registered_here};
use crate::context::Services;
use dive_engine::{Phase, PhaseContext, PhaseError, async_trait, typetag};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// An instance's services in removal order (Keycloak before the PostgreSQL it uses), each with
/// the data it is removed with.
const SERVICE_DATA: [(&str, &[&str]); 2] = [("keycloak", &[]), ("postgres", &["pgdata"])];

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRemove {
    pub code: String,
}

#[typetag::serde(name = "instance.remove")]
#[async_trait]
impl Phase for InstanceRemove {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let code = code_of(&self.code)?;
        let rt = Services::of(ctx)?.runtime().clone();
        let lower = code.to_ascii_lowercase();
        let mut services = Vec::new();
        for (name, data) in SERVICE_DATA {
            ctx.note(format!("removing {name} and its data on {}", rt.kind()));
            let data: Vec<String> = data.iter().map(|d| d.to_string()).collect();
            rt.remove(&lower, name, &data).await?;
            services.push(name.to_string());
        }
        let mut resources = Vec::new();
        for r in rt.owned_by(&lower).await? {
            ctx.note(format!("removing {} {}", r.kind, r.name));
            rt.remove_resource(&r).await?;
            resources.push(format!("{} {}", r.kind, r.name));
        }
        Ok(json!({
            "code": code,
            "code_lower": lower,
            "runtime": rt.kind(),
            "services": services,
            "resources": resources,
        }))
    }

    async fn precheck(&self, ctx: &PhaseContext) -> Result<(), String> {
        registered_here(ctx, &self.code, false).await
    }
}
