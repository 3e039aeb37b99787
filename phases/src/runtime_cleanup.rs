//! `runtime.cleanup`: removes what dive created on one runtime — every resource it lists as
//! dive's (`Runtime::managed`: services, containers, volumes, networks, data directories), or only
//! one instance's (`Runtime::owned_by`) — users before what they use. Nothing else is touched
//! (Docker objects without the `dive.managed=true` label are never listed).
//!
//! ```yaml
//! - id: docker
//!   type: runtime.cleanup
//!   runtime: docker          # a registered runtime (`RuntimeKind::all()`)
//!   instance: ""             # an instance code (any case), or empty: everything dive made
//! ```
//! Output `{runtime, instance, removed: ["container dive-fra-postgres", …], skipped}`; `skipped`
//! says why a runtime that cannot be reached (a stopped Docker engine) was left alone.
//!
//! Idempotency: what is already gone is not listed again; a second run removes nothing. A
//! resource that cannot be removed fails the phase after every other one was tried (a retry or a
//! resume lists again and tries what is left). Compensation: none — what was removed cannot be
//! brought back.

use crate::context::Services;
use dive_engine::{Phase, PhaseContext, PhaseError, async_trait, typetag};
use dive_runtime::RuntimeKind;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeCleanup {
    pub runtime: RuntimeKind,
    /// An instance code; empty or absent: everything dive created on the runtime.
    #[serde(default)]
    pub instance: Option<String>,
}

#[typetag::serde(name = "runtime.cleanup")]
#[async_trait]
impl Phase for RuntimeCleanup {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let instance = self
            .instance
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_ascii_lowercase);
        let rt = match Services::of(ctx)?.connect(self.runtime).await {
            Ok(rt) => rt,
            Err(e) => {
                let why = dive_error::chain(&e);
                ctx.note(format!("{}: skipped ({why})", self.runtime));
                return Ok(json!({
                    "runtime": self.runtime,
                    "instance": instance,
                    "removed": [],
                    "skipped": why,
                }));
            }
        };
        let mut found = match &instance {
            Some(code) => rt.owned_by(code).await?,
            None => rt.managed().await?,
        };
        found.sort_by_key(|r| r.kind.removal_rank());
        let mut removed = Vec::new();
        let mut failed = Vec::new();
        for r in &found {
            ctx.note(format!("removing {} {}", r.kind, r.name));
            match rt.remove_resource(r).await {
                Ok(()) => removed.push(format!("{} {}", r.kind, r.name)),
                Err(e) => failed.push(format!("{} {}: {}", r.kind, r.name, dive_error::chain(&e))),
            }
        }
        if !failed.is_empty() {
            return Err(PhaseError::retryable(format!(
                "could not remove {} of {} resources on {} ({} removed): {}",
                failed.len(),
                found.len(),
                self.runtime,
                removed.len(),
                failed.join("; ")
            )));
        }
        Ok(json!({
            "runtime": self.runtime,
            "instance": instance,
            "removed": removed,
            "skipped": null,
        }))
    }
}
