//! Prechecks run before a run exists: a refusing phase stops it with nothing written.

use dive_engine::{
    Engine, EngineError, Phase, PhaseContext, PhaseError, RunOptions, Store, Workflow, async_trait,
    typetag,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

mod common;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Picky {
    allow: bool,
}

#[typetag::serde(name = "picky")]
#[async_trait]
impl Phase for Picky {
    async fn run(&self, _ctx: &PhaseContext) -> Result<Value, PhaseError> {
        Ok(json!({}))
    }

    async fn precheck(&self, _ctx: &PhaseContext) -> Result<(), String> {
        if self.allow {
            Ok(())
        } else {
            Err("the hub is not deployed".into())
        }
    }
}

#[tokio::test]
async fn a_failed_precheck_writes_nothing() {
    let store = Store::open(&common::db("precheck").url).await.unwrap();
    let engine = Engine::new(store.clone());
    let yaml = "name: pre\nlock: pre-test\nphases:\n  - { id: ok, type: picky, allow: true }\n  - { id: no, type: picky, allow: false, after: [ok] }\n";
    let plan = Workflow::parse("pre.yaml", yaml)
        .unwrap()
        .plan(&BTreeMap::new())
        .unwrap();
    let err = engine
        .start(&plan, &RunOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_invalid_input());
    assert!(matches!(err, EngineError::Precheck(_)));
    assert_eq!(
        err.to_string(),
        "pre.yaml: phase `no`: the hub is not deployed"
    );
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE lock_key = 'pre-test'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(runs, 0);
}
