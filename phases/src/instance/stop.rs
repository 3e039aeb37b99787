//! `instance.stop`: stops an instance's services on the run's runtime, in reverse start order
//! (Keycloak before its PostgreSQL), keeping the services and their data.
//!
//! ```yaml
//! - id: stop
//!   type: instance.stop
//!   code: ${params.code}     # ISO 3166-1 alpha-3, any case
//! ```
//! Output `{code, runtime, stopped: ["keycloak", "postgres"]}`: the services stopped, in order.
//!
//! Precheck: the instance is registered, and on the run's runtime (stopping it elsewhere would
//! stop nothing and say it did).
//!
//! Idempotency: stopping a stopped (or missing) service succeeds and changes nothing.
//! Compensation: none — the services are kept with their data, and `dive hub|spoke up` starts
//! them again.

use super::{code_of, registered_here};
use crate::context::Services;
use dive_engine::{Phase, PhaseContext, PhaseError, async_trait, typetag};
use dive_instances::health::SERVICES;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceStop {
    pub code: String,
}

#[typetag::serde(name = "instance.stop")]
#[async_trait]
impl Phase for InstanceStop {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let code = code_of(&self.code)?;
        let rt = Services::of(ctx)?.runtime().clone();
        let lower = code.to_ascii_lowercase();
        let mut stopped = Vec::new();
        for name in SERVICES.iter().rev() {
            ctx.note(format!("stopping {name} on {}", rt.kind()));
            rt.stop(&lower, name).await?;
            stopped.push(name.to_string());
        }
        Ok(json!({ "code": code, "runtime": rt.kind(), "stopped": stopped }))
    }

    async fn precheck(&self, ctx: &PhaseContext) -> Result<(), String> {
        registered_here(ctx, &self.code, true).await
    }
}
