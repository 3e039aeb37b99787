//! Dry runs: each phase is planned in dependency order with the outputs its ancestors would
//! give; an output decided by the run reaches later phases as "known after apply"; a phase
//! type that cannot plan says so; nothing is recorded and no lock is taken.

use dive_engine::{
    Action, Change, Engine, EngineError, KNOWN_AFTER_APPLY, Phase, PhaseContext, PhaseError,
    PhasePlan, RunOptions, Store, Workflow, async_trait, typetag,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

mod common;

/// Plans a creation of `name` whose output `port` is decided by the run unless `port` is given;
/// `needs` is what it was given from an earlier phase.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Maker {
    name: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    needs: Option<String>,
}

#[typetag::serde(name = "maker")]
#[async_trait]
impl Phase for Maker {
    async fn run(&self, _ctx: &PhaseContext) -> Result<Value, PhaseError> {
        Ok(json!({ "port": self.port.unwrap_or(1) }))
    }

    async fn plan(&self, _ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let port = self.port.map_or(json!(KNOWN_AFTER_APPLY), Value::from);
        let change = Change::new(Some("fra"), format!("thing {}", self.name), Action::Create)
            .field("needs", Value::Null, self.needs.clone().unwrap_or_default());
        Ok(PhasePlan::changes(vec![change], json!({ "port": port })))
    }
}

/// A phase type without a plan of its own.
#[derive(Debug, Serialize, Deserialize)]
struct Opaque {}

#[typetag::serde(name = "opaque")]
#[async_trait]
impl Phase for Opaque {
    async fn run(&self, _ctx: &PhaseContext) -> Result<Value, PhaseError> {
        Ok(json!({}))
    }
}

fn plan(yaml: &str) -> dive_engine::Plan {
    Workflow::parse("dry.yaml", yaml)
        .unwrap()
        .plan(&BTreeMap::new())
        .unwrap()
}

#[tokio::test]
async fn outputs_flow_to_later_phases_and_unknown_ones_are_marked() {
    let store = Store::open(&common::db("dry_run").url).await.unwrap();
    let engine = Engine::new(store.clone());
    let plan = plan(
        "name: dry\nlock: dry-test\nphases:\n\
         - { id: a, type: maker, name: a, port: 5432 }\n\
         - { id: b, type: maker, name: b, after: [a], needs: \"port ${phases.a.output.port}\" }\n\
         - { id: c, type: maker, name: c, after: [b], needs: \"port ${phases.b.output.port}\" }\n\
         - { id: d, type: opaque, after: [c] }\n",
    );
    let dry = engine.dry_run(&plan, &RunOptions::default()).await.unwrap();
    assert!(dry.would_change());
    let needs: Vec<&Value> = dry
        .changes()
        .filter(|c| c.object.starts_with("thing"))
        .map(|c| &c.fields[0].new)
        .collect();
    assert_eq!(
        needs,
        [
            &json!(""),
            &json!("port 5432"),
            &json!(format!("port {KNOWN_AFTER_APPLY}"))
        ]
    );
    let d: Vec<&Change> = dry.steps[3].changes.iter().collect();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].action, Action::KnownAfterApply);
    assert_eq!(
        dry.changes().next().unwrap().instance.as_deref(),
        Some("FRA")
    );
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(runs, 0, "a dry run records nothing");
}

#[tokio::test]
async fn a_held_lock_refuses_the_dry_run_without_taking_it() {
    let store = Store::open(&common::db("dry_run_lock").url).await.unwrap();
    let engine = Engine::new(store.clone());
    let holder =
        plan("name: hold\nlock: dry-lock\nphases:\n  - { id: a, type: maker, name: a, port: 1 }\n");
    // Hold the key the way a run does: an advisory lock on a session of its own.
    let mut conn = store.pool().acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('dry-lock', 0))")
        .execute(&mut *conn)
        .await
        .unwrap();
    let err = engine
        .dry_run(&holder, &RunOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::LockHeld { key, .. } if key == "dry-lock"),
        "{err}"
    );
    sqlx::query("SELECT pg_advisory_unlock(hashtextextended('dry-lock', 0))")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let dry = engine
        .dry_run(&holder, &RunOptions::default())
        .await
        .unwrap();
    assert_eq!(dry.changes().count(), 1);
}
