//! `instance.unregister`: removes an instance's registration, freeing its port block
//! (`Instances::remove`). Meant to go last in a reset, so an instance whose removal failed
//! part-way stays visible to `status` and a resume (or a second reset) finishes the job.
//!
//! ```yaml
//! - id: unregister
//!   type: instance.unregister
//!   code: ${params.code}     # ISO 3166-1 alpha-3, any case
//! ```
//! Output `{code, unregistered, role, runtime, port_block}`: whether a registration was removed,
//! and what it was (null fields when there was none).
//!
//! Idempotency: an instance that is not registered is success with `unregistered: false`.
//! Compensation: none — the port block is free for others as soon as it is released, and a
//! deploy registers the instance again.

use super::code_of;
use crate::context::Services;
use dive_engine::{Phase, PhaseContext, PhaseError, async_trait, typetag};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceUnregister {
    pub code: String,
}

#[typetag::serde(name = "instance.unregister")]
#[async_trait]
impl Phase for InstanceUnregister {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let code = code_of(&self.code)?;
        let removed = Services::of(ctx)?.instances().remove(&code).await?;
        Ok(json!({
            "code": code,
            "unregistered": removed.is_some(),
            "role": removed.as_ref().map(|r| r.role),
            "runtime": removed.as_ref().map(|r| r.runtime),
            "port_block": removed.as_ref().map(|r| r.port_block),
        }))
    }
}
