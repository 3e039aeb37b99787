//! `runtime.cleanup`: removes what dive created on a runtime, or on every registered runtime
//! when none is named (so a new runtime is cleaned without touching any workflow) — every
//! resource it lists as dive's (`Runtime::managed`: services, containers, volumes, networks, data
//! directories), or only one instance's (`Runtime::owned_by`) — users before what they use.
//! Nothing else is touched (Docker objects without the `dive.managed=true` label are never
//! listed).
//!
//! ```yaml
//! - id: remove
//!   type: runtime.cleanup
//!   runtime: docker          # optional: one registered runtime; absent: all of them
//!   instance: ""             # an instance code (any case), or empty: everything dive made
//! ```
//! Output `{instance, removed: ["docker container dive-fra-postgres", …], skipped: {runtime:
//! why}}`; `skipped` says why a runtime that cannot be reached (a stopped Docker engine) was left
//! alone.
//!
//! Idempotency: what is already gone is not listed again; a second run removes nothing. A
//! resource that cannot be removed fails the phase after every other one was tried (a retry or a
//! resume lists again and tries what is left). Compensation: none — what was removed cannot be
//! brought back.

use crate::context::Services;
use dive_engine::{
    Action, Change, Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag,
};
use dive_runtime::RuntimeKind;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeCleanup {
    /// One runtime; absent: every registered runtime.
    #[serde(default)]
    pub runtime: Option<RuntimeKind>,
    /// An instance code; empty or absent: everything dive created on the runtime.
    #[serde(default)]
    pub instance: Option<String>,
}

impl RuntimeCleanup {
    /// The instance code to clean (lower case), or `None` for everything dive created.
    fn instance(&self) -> Option<String> {
        self.instance
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_ascii_lowercase)
    }

    fn kinds(&self) -> Vec<RuntimeKind> {
        match self.runtime {
            Some(kind) => vec![kind],
            None => RuntimeKind::all().collect(),
        }
    }
}

#[typetag::serde(name = "runtime.cleanup")]
#[async_trait]
impl Phase for RuntimeCleanup {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let instance = self.instance();
        let kinds = self.kinds();
        let mut removed = Vec::new();
        let mut failed = Vec::new();
        let mut skipped = serde_json::Map::new();
        for kind in kinds {
            let rt = match Services::of(ctx)?.connect(kind).await {
                Ok(rt) => rt,
                Err(e) => {
                    let why = dive_error::chain(&e);
                    ctx.note(format!("{kind}: skipped ({why})"));
                    skipped.insert(kind.to_string(), why.into());
                    continue;
                }
            };
            let mut found = match &instance {
                Some(code) => rt.owned_by(code).await?,
                None => rt.managed().await?,
            };
            found.sort_by_key(|r| r.kind.removal_rank());
            for r in &found {
                ctx.note(format!("removing {kind} {} {}", r.kind, r.name));
                match rt.remove_resource(r).await {
                    Ok(()) => removed.push(format!("{kind} {} {}", r.kind, r.name)),
                    Err(e) => failed.push(format!(
                        "{kind} {} {}: {}",
                        r.kind,
                        r.name,
                        dive_error::chain(&e)
                    )),
                }
            }
        }
        if !failed.is_empty() {
            return Err(PhaseError::retryable(format!(
                "could not remove {} resources ({} removed): {}",
                failed.len(),
                removed.len(),
                failed.join("; ")
            )));
        }
        Ok(json!({
            "instance": instance,
            "removed": removed,
            "skipped": skipped,
        }))
    }

    /// Every resource that would be removed, by runtime; a runtime that cannot be reached is
    /// skipped (as `run` skips it). Only reads.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let instance = self.instance();
        let mut changes = Vec::new();
        let mut removed = Vec::new();
        for kind in self.kinds() {
            let Ok(rt) = Services::of(ctx)?.connect(kind).await else {
                continue;
            };
            let mut found = match &instance {
                Some(code) => rt.owned_by(code).await?,
                None => rt.managed().await?,
            };
            found.sort_by_key(|r| r.kind.removal_rank());
            for r in found {
                removed.push(format!("{kind} {} {}", r.kind, r.name));
                changes.push(Change::new(
                    r.instance.as_deref(),
                    format!("{} {} ({kind})", r.kind, r.name),
                    Action::Delete,
                ));
            }
        }
        Ok(PhasePlan::changes(
            changes,
            json!({ "instance": instance, "removed": removed, "skipped": {} }),
        ))
    }
}
