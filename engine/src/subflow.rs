//! `workflow`: runs another workflow as a child run, so bigger operations are composed from the
//! same building blocks (a quickstart deploys the hub and a spoke side by side as two children).
//!
//! The child is a full run of its own: own lock keys, own checkpoints, own rollback on failure,
//! visible in `dive runs list`.
//!
//! Locks: the child runs under its ancestors' locks. Keys of the child that the parent run (or
//! any ancestor) already holds are not taken again — the parent's session holds them, so taking
//! them would fail — and the child takes only its other keys ([`RunOptions::held_lock_keys`],
//! passed down from [`PhaseContext::held_lock_keys`]). A child resumed on its own with
//! `dive resume CHILD_ID` has no parent holding anything and takes all of its keys itself.
//!
//! Idempotency: each child is recorded with its parent run and key (the phase id); when the
//! parent runs the phase again (resumed after a crash), it resumes that child where it stopped
//! (or reuses it, if it succeeded) instead of starting a second one.
//! Compensation: none — a failed child has already rolled itself back, and a child that
//! succeeded is a finished deployment that a later failure elsewhere should not tear down.

use crate::dry_run::{Action, Change, KNOWN_AFTER_APPLY, PhasePlan, is_known_after_apply};
use crate::phase::{Phase, PhaseContext, PhaseError};
use crate::runner::{Engine, RunOptions};
use crate::state::RunState;
use crate::workflow::Workflow;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Where child workflows come from (the CLI's built-in workflows).
pub trait WorkflowCatalog: Send + Sync {
    fn load(&self, name: &str) -> Result<Workflow, String>;
}

/// The catalog of an engine given none: child workflows are refused (by the precheck, before
/// the run starts).
pub struct NoWorkflows;

impl WorkflowCatalog for NoWorkflows {
    fn load(&self, name: &str) -> Result<Workflow, String> {
        Err(format!(
            "no workflow `{name}`: this engine has no workflow catalog"
        ))
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubWorkflow {
    /// Name of a built-in workflow.
    pub workflow: String,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

/// The engine a child run (or its dry run) uses: the parent's store, catalog, services and
/// lock expander.
fn child_engine(ctx: &PhaseContext) -> Engine {
    Engine::new(ctx.store.clone())
        .with_catalog(ctx.catalog.clone())
        .with_services(ctx.services.clone())
        .with_lock_expander(ctx.lock_expander.clone())
}

impl SubWorkflow {
    fn child_plan(&self, ctx: &PhaseContext) -> Result<crate::plan::Plan, String> {
        let workflow = ctx.catalog.load(&self.workflow)?;
        workflow.plan(&self.params).map_err(|e| e.to_string())
    }
}

impl SubWorkflow {
    /// Runs the child under `key` (unique among the children of this run): a child already
    /// started under that key by this run — a parent resumed after a crash — is not started
    /// again: a succeeded one is reused, an unfinished one resumed; only one that rolled back
    /// or was cancelled is replaced by a new run. Fails unless the child succeeds.
    pub async fn run_child(&self, ctx: &PhaseContext, key: &str) -> Result<Value, PhaseError> {
        let engine = child_engine(ctx);
        let opts = RunOptions {
            events: ctx.events.scoped(key),
            cancel: ctx.cancel.child_token(),
            held_lock_keys: ctx.held_lock_keys.clone(),
            parent: Some((ctx.run_id, key.to_string())),
            ..RunOptions::default()
        };
        let existing = ctx
            .store
            .child_run(ctx.run_id, key)
            .await
            .map_err(|e| PhaseError::retryable(format!("workflow `{}`: {e}", self.workflow)))?;
        let outcome = match existing {
            Some((id, RunState::Succeeded)) => {
                return Ok(json!({ "workflow": self.workflow, "run_id": id, "state": RunState::Succeeded }));
            }
            Some((id, state)) if state.is_resumable() && state != RunState::Cancelled => {
                engine.resume(id, &opts).await
            }
            _ => {
                let plan = self.child_plan(ctx).map_err(PhaseError::fatal)?;
                engine.start(&plan, &opts).await
            }
        }
        .map_err(|e| PhaseError::fatal(format!("workflow `{}`: {e}", self.workflow)))?;
        if outcome.state != RunState::Succeeded {
            return Err(PhaseError::fatal(format!(
                "workflow `{}` (run {}) ended {}: {}",
                self.workflow,
                outcome.run_id,
                outcome.state,
                outcome.error.unwrap_or_default()
            )));
        }
        Ok(json!({ "workflow": self.workflow, "run_id": outcome.run_id, "state": outcome.state }))
    }
}

#[typetag::serde(name = "workflow")]
#[async_trait]
impl Phase for SubWorkflow {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        self.run_child(ctx, &ctx.phase_id).await
    }

    /// The child workflow exists and takes these parameters.
    async fn precheck(&self, ctx: &PhaseContext) -> Result<(), String> {
        if self.params.values().any(|v| v.contains("${")) {
            return Ok(());
        }
        self.child_plan(ctx).map(|_| ())
    }

    /// The child's own dry run: its changes are this phase's.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let output = json!({
            "workflow": self.workflow, "run_id": KNOWN_AFTER_APPLY, "state": RunState::Succeeded
        });
        if self.params.values().any(|v| is_known_after_apply(v)) {
            return Ok(PhasePlan::changes(
                vec![
                    Change::new(
                        None,
                        format!("workflow {}", self.workflow),
                        Action::KnownAfterApply,
                    )
                    .because("its parameters use outputs of phases that would change"),
                ],
                output,
            ));
        }
        let plan = self.child_plan(ctx).map_err(PhaseError::fatal)?;
        let engine = child_engine(ctx);
        let opts = RunOptions {
            held_lock_keys: ctx.held_lock_keys.clone(),
            ..RunOptions::default()
        };
        let child = engine
            .plan_phases(&plan, &opts)
            .await
            .map_err(|e| PhaseError::fatal(format!("workflow `{}`: {e}", self.workflow)))?;
        Ok(PhasePlan::changes(
            child.changes().cloned().collect(),
            output,
        ))
    }
}
