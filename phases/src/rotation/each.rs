//! `rotation.each`: rotates every registered instance, each as a child run of
//! `secret-rotation` (`dive secrets rotate --all`). The spokes rotate side by side — two spokes
//! share no link, and each spoke's run rotates both directions of its link with the hub — and
//! then the hub, without the `federation` kind (its links were just rotated by the spokes' runs;
//! a hub with no spoke rotates everything).
//!
//! ```yaml
//! - id: rotate
//!   type: rotation.each
//!   only: "${params.only}"
//!   older_than: "${params.older_than}"
//!   keep: "${params.keep}"
//!   grace: "${params.grace}"
//! ```
//! Output `{children: [{code, run_id}]}`.
//!
//! Idempotency: each child is keyed `<phase>/<CODE>`; a re-run (the parent resumed) resumes an
//! unfinished child and reuses a finished one, so no secret is minted twice. Compensation: none —
//! each child rolled itself back if it failed, and a child that succeeded is a finished rotation.

use super::{KINDS, parse_kinds};
use crate::context::Services;
use dive_engine::subflow::SubWorkflow;
use dive_engine::{
    KNOWN_AFTER_APPLY, Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag,
};
use dive_instances::Role;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationEach {
    pub only: String,
    pub older_than: String,
    pub keep: String,
    pub grace: String,
}

impl RotationEach {
    /// The children, each `(code, kinds)`: the spokes (run side by side), then the hub
    /// (without `federation` when there are spokes: their runs rotate both directions).
    async fn children(
        &self,
        ctx: &PhaseContext,
    ) -> Result<(Vec<(String, String)>, Vec<(String, String)>), PhaseError> {
        let kinds = parse_kinds(&self.only).map_err(PhaseError::fatal)?;
        let instances = Services::of(ctx)?.instances().list().await?;
        let (hubs, spokes): (Vec<_>, Vec<_>) =
            instances.into_iter().partition(|i| i.role == Role::Hub);
        let hub_kinds: Vec<&str> = kinds
            .iter()
            .copied()
            .filter(|k| spokes.is_empty() || *k != "federation")
            .collect();
        let spokes = spokes
            .into_iter()
            .map(|s| (s.code, kinds.join(",")))
            .collect();
        let hubs = hubs
            .into_iter()
            .filter(|_| !hub_kinds.is_empty())
            .map(|h| (h.code, hub_kinds.join(",")))
            .collect();
        Ok((spokes, hubs))
    }

    fn child(&self, code: &str, only: &str) -> SubWorkflow {
        SubWorkflow {
            workflow: "secret-rotation".into(),
            params: BTreeMap::from([
                ("code".to_string(), code.to_string()),
                ("only".to_string(), only.to_string()),
                ("older_than".to_string(), self.older_than.clone()),
                ("keep".to_string(), self.keep.clone()),
                ("grace".to_string(), self.grace.clone()),
            ]),
        }
    }
}

#[typetag::serde(name = "rotation.each")]
#[async_trait]
impl Phase for RotationEach {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let kinds = parse_kinds(&self.only).map_err(PhaseError::fatal)?;
        let (spokes, hubs) = self.children(ctx).await?;
        let key = |code: &str| format!("{}/{code}", ctx.phase_id);
        ctx.note(format!(
            "{} spoke(s) side by side, then {} hub",
            spokes.len(),
            hubs.len()
        ));
        let results = futures::future::join_all(spokes.iter().map(|(code, only)| {
            let child = self.child(code, only);
            let key = key(code);
            async move { child.run_child(ctx, &key).await }
        }))
        .await;
        let mut children = Vec::new();
        let mut failures = Vec::new();
        for ((code, _), r) in spokes.iter().zip(results) {
            match r {
                Ok(out) => children.push(json!({ "code": code, "run_id": out["run_id"] })),
                Err(e) => failures.push(format!("{code}: {e}")),
            }
        }
        if !failures.is_empty() {
            return Err(PhaseError::fatal(failures.join("; ")));
        }
        for (code, only) in &hubs {
            let out = self.child(code, only).run_child(ctx, &key(code)).await?;
            children.push(json!({ "code": code, "run_id": out["run_id"] }));
        }
        Ok(
            json!({ "children": children, "kinds": KINDS.iter().filter(|k| kinds.contains(k)).collect::<Vec<_>>() }),
        )
    }

    /// Each child's own plan, in the order they would run.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let kinds = parse_kinds(&self.only).map_err(PhaseError::fatal)?;
        let (spokes, hubs) = self.children(ctx).await?;
        let mut changes = Vec::new();
        let mut children = Vec::new();
        for (code, only) in spokes.iter().chain(&hubs) {
            changes.extend(self.child(code, only).plan(ctx).await?.changes);
            children.push(json!({ "code": code, "run_id": KNOWN_AFTER_APPLY }));
        }
        Ok(PhasePlan::changes(
            changes,
            json!({ "children": children, "kinds": KINDS.iter().filter(|k| kinds.contains(k)).collect::<Vec<_>>() }),
        ))
    }
}
