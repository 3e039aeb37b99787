//! Plan before apply: what a run of a plan would change, object by object, found by asking each
//! phase ([`crate::Phase::plan`]) in dependency order — and nothing written anywhere: no run is
//! recorded, no lock is taken (held locks are only read, from `pg_locks`), no phase runs.
//!
//! A phase's plan says what it would change and, where it can, the output its run would give;
//! later phases are instantiated with those outputs. An output a phase cannot know before it
//! runs (a port allocated by the run, an id Keycloak assigns) is the text
//! [`KNOWN_AFTER_APPLY`], which a phase's plan sees in its fields and reports instead of
//! guessing.

use crate::error::EngineError;
use crate::events::EventSink;
use crate::interpolate::{self, Reference};
use crate::phase::PhaseContext;
use crate::plan::{Plan, PlannedPhase};
use crate::runner::{Engine, RunOptions};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The value of anything a run decides (a port it allocates, an id a server assigns).
pub const KNOWN_AFTER_APPLY: &str = "(known after apply)";

/// What a secret's old or new value is shown as.
pub const SENSITIVE: &str = "(sensitive)";

/// Whether `value` (a field a phase was given) is only known once the run has applied earlier
/// phases.
pub fn is_known_after_apply(value: &str) -> bool {
    value.contains(KNOWN_AFTER_APPLY)
}

/// What would happen to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// It does not exist and would be made.
    Create,
    /// It exists and some of its fields would change.
    Update,
    /// It exists and would be removed.
    Delete,
    /// It exists, stopped, and would be started.
    Start,
    /// It would be stopped.
    Stop,
    /// A command or check would run; what it changes cannot be known (an `exec` phase).
    Run,
    /// What would happen depends on something an earlier phase would change first.
    KnownAfterApply,
}

impl Action {
    /// The one-character mark of a plan line: `+` create, `~` update, `-` delete, …
    pub fn mark(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Update => "~",
            Action::Delete => "-",
            Action::Start => ">",
            Action::Stop => "=",
            Action::Run => "!",
            Action::KnownAfterApply => "?",
        }
    }
}

/// One field of an object that would change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    /// `null` when the object does not exist yet.
    pub old: Value,
    pub new: Value,
}

/// What would happen to one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The instance the object belongs to (upper case), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// What it is, e.g. `realm dive-fra`, `service keycloak`, `secret fra/postgres/password`.
    pub object: String,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
    /// Why, when the action alone does not say it (e.g. "the spec changed").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Change {
    pub fn new(instance: Option<&str>, object: impl Into<String>, action: Action) -> Self {
        Change {
            instance: instance.map(str::to_uppercase),
            object: object.into(),
            action,
            fields: Vec::new(),
            reason: None,
        }
    }

    /// A field that would change from `old` to `new`.
    pub fn field(mut self, field: &str, old: impl Into<Value>, new: impl Into<Value>) -> Self {
        self.fields.push(FieldChange {
            field: field.to_string(),
            old: old.into(),
            new: new.into(),
        });
        self
    }

    /// Every top-level field of object `new` whose value in `old` differs, with both values
    /// (`old` null: the object is new, every field is listed; two values that are not objects:
    /// one field `value`).
    pub fn diff(mut self, old: &Value, new: &Value) -> Self {
        let none = serde_json::Map::new();
        let old_fields = if old.is_null() {
            Some(&none)
        } else {
            old.as_object()
        };
        match (old_fields, new.as_object()) {
            (Some(o), Some(n)) => {
                for (k, v) in n {
                    let before = o.get(k).cloned().unwrap_or(Value::Null);
                    if &before != v {
                        self = self.field(k, before, v.clone());
                    }
                }
            }
            _ if old != new => self = self.field("value", old.clone(), new.clone()),
            _ => {}
        }
        self
    }

    pub fn because(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// What one phase would do: its changes, and the output its run would give (with
/// [`KNOWN_AFTER_APPLY`] where a value is decided by the run; `null` when nothing is known).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PhasePlan {
    pub changes: Vec<Change>,
    pub output: Value,
}

impl PhasePlan {
    /// Nothing would change; the run would give `output`.
    pub fn unchanged(output: Value) -> Self {
        PhasePlan {
            changes: Vec::new(),
            output,
        }
    }

    /// `changes`, and the run would give `output`.
    pub fn changes(changes: Vec<Change>, output: Value) -> Self {
        PhasePlan { changes, output }
    }
}

/// One phase of a dry run.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub phase: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub changes: Vec<Change>,
}

/// What a run of a plan would change.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub workflow: String,
    pub params: std::collections::BTreeMap<String, String>,
    pub steps: Vec<PlannedStep>,
}

impl DryRun {
    /// Every change, in phase order.
    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.steps.iter().flat_map(|s| s.changes.iter())
    }

    /// Whether a run would change anything.
    pub fn would_change(&self) -> bool {
        self.changes().next().is_some()
    }
}

impl Engine {
    /// Plans `plan` without running it: every phase's [`crate::Phase::plan`], in dependency
    /// order. Refuses like [`Engine::start`] would — invalid input, or a lock another run holds
    /// ([`EngineError::LockHeld`]) — but writes nothing and takes no lock.
    pub async fn dry_run(&self, plan: &Plan, opts: &RunOptions) -> Result<DryRun, EngineError> {
        let plan = self.checked_plan(plan, opts).await?;
        if let Some((key, holder)) = self
            .store()
            .held_lock(&opts.own_lock_keys(&plan.lock_keys))
            .await?
        {
            return Err(EngineError::LockHeld { key, holder });
        }
        self.plan_phases(&plan, opts).await
    }

    /// The phases of `plan`, planned in dependency order (no lock, no precheck: a child
    /// workflow's dry run is part of its parent's).
    pub async fn plan_phases(&self, plan: &Plan, opts: &RunOptions) -> Result<DryRun, EngineError> {
        let dag = plan.dag();
        let mut outputs: HashMap<String, Value> = HashMap::new();
        let mut steps = Vec::new();
        for &i in &dag.topo {
            let p = &plan.phases[i];
            let ctx = PhaseContext {
                run_id: Uuid::nil(),
                phase_id: p.id.clone(),
                attempt: 0,
                cancel: CancellationToken::new(),
                store: self.store().clone(),
                catalog: self.catalog(),
                services: self.services(),
                lock_expander: self.lock_expander(),
                events: EventSink::none(),
                held_lock_keys: opts.all_lock_keys(&plan.lock_keys),
                planned_outputs: Arc::new(outputs.clone()),
            };
            let planned = match instantiate_planned(p, &outputs) {
                Ok(phase) => phase.plan(&ctx).await.map_err(|e| {
                    let what = format!("{}: phase `{}`: {e}", plan.source, p.id);
                    // A refusal is the caller's input (a role or runtime conflict, say);
                    // anything that a retry could fix is not.
                    if e.is_retryable() {
                        EngineError::Plan(what)
                    } else {
                        EngineError::Precheck(vec![what])
                    }
                })?,
                // A field that must be a number or a list is only known after apply.
                Err(_) => PhasePlan::changes(
                    vec![
                        Change::new(None, format!("phase {}", p.id), Action::KnownAfterApply)
                            .because("its fields use outputs of phases that would change"),
                    ],
                    Value::Null,
                ),
            };
            outputs.insert(p.id.clone(), planned.output);
            steps.push(PlannedStep {
                phase: p.id.clone(),
                kind: p.kind.clone(),
                description: p.description.clone(),
                changes: planned.changes,
            });
        }
        // Phase order as the workflow lists them, for a stable, readable plan.
        steps.sort_by_key(|s| plan.phases.iter().position(|p| p.id == s.phase));
        Ok(DryRun {
            workflow: plan.workflow.clone(),
            params: plan.params.clone(),
            steps,
        })
    }
}

/// `p` with its output references resolved from the planned `outputs`: a reference into an
/// output (or a field) that is not known resolves to [`KNOWN_AFTER_APPLY`].
fn instantiate_planned(
    p: &PlannedPhase,
    outputs: &HashMap<String, Value>,
) -> Result<Box<dyn crate::Phase>, String> {
    let spec = interpolate::substitute_all(&p.spec, &mut |r| match r {
        Reference::Output { phase, path } => Ok(Some(
            outputs
                .get(phase)
                .and_then(|o| interpolate::lookup(o, path))
                .filter(|v| !v.is_null())
                .cloned()
                .unwrap_or_else(|| Value::String(KNOWN_AFTER_APPLY.into())),
        )),
        Reference::Param(_) => Ok(None),
    })?;
    crate::plan::typed(&spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_diff_lists_the_fields_that_differ_with_both_values() {
        let created = Change::new(Some("fra"), "realm dive-fra", Action::Create).diff(
            &Value::Null,
            &json!({"enabled": true, "displayName": "DIVE FRA"}),
        );
        assert_eq!(created.instance.as_deref(), Some("FRA"));
        assert_eq!(created.fields.len(), 2);
        assert!(created.fields.iter().all(|f| f.old.is_null()));

        let updated = Change::new(None, "x", Action::Update).diff(
            &json!({"enabled": false, "displayName": "DIVE FRA", "extra": 1}),
            &json!({"enabled": true, "displayName": "DIVE FRA"}),
        );
        assert_eq!(
            updated.fields,
            vec![FieldChange {
                field: "enabled".into(),
                old: json!(false),
                new: json!(true)
            }]
        );
        let same = Change::new(None, "x", Action::Update).diff(&json!(1), &json!(1));
        assert!(same.fields.is_empty());
        assert!(is_known_after_apply(&format!("port {KNOWN_AFTER_APPLY}")));
        assert_eq!(Action::Delete.mark(), "-");
    }
}
