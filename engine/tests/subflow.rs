//! `type: workflow` runs child workflows as runs of their own, side by side when independent,
//! with their progress events scoped under the parent phase.

use dive_engine::{
    Engine, Event, EventSink, Phase, PhaseContext, PhaseError, RunOptions, RunState, Store,
    Workflow, WorkflowCatalog, async_trait, typetag,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

mod common;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Nap {
    ms: u64,
    /// "true" to fail (a string, as parameters are).
    #[serde(default)]
    fail: String,
}

#[typetag::serde(name = "nap")]
#[async_trait]
impl Phase for Nap {
    async fn run(&self, _ctx: &PhaseContext) -> Result<Value, PhaseError> {
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        if self.fail == "true" {
            return Err(PhaseError::fatal("nap refused"));
        }
        Ok(json!({}))
    }
}

struct Children;

impl WorkflowCatalog for Children {
    fn load(&self, name: &str) -> Result<Workflow, String> {
        let text = match name {
            "child" => {
                "name: child\nlock: \"child:${params.tag}\"\nparams:\n  tag: {}\n  fail: { default: \"false\" }\nphases:\n  - { id: a, type: nap, ms: 400 }\n  - { id: b, type: nap, ms: 10, fail: \"${params.fail}\", after: [a] }\n"
            }
            other => return Err(format!("no workflow `{other}`")),
        };
        Workflow::parse(name, text).map_err(|e| e.to_string())
    }
}

fn parent(tag: &str, fail_second: bool) -> dive_engine::Plan {
    let yaml = format!(
        "name: parent\nlock: \"parent:{tag}\"\nphases:\n  - {{ id: one, type: workflow, workflow: child, params: {{ tag: \"{tag}-1\" }} }}\n  - {{ id: two, type: workflow, workflow: child, params: {{ tag: \"{tag}-2\", fail: \"{fail_second}\" }} }}\n"
    );
    Workflow::parse("parent.yaml", &yaml)
        .unwrap()
        .plan(&BTreeMap::new())
        .unwrap()
}

async fn engine() -> Engine {
    let store = Store::open(&common::db("subflow").url).await.unwrap();
    Engine::new(store).with_catalog(Arc::new(Children))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_run_side_by_side_as_runs_of_their_own() {
    let engine = engine().await;
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let opts = RunOptions {
        events: EventSink::new(tx),
        ..RunOptions::default()
    };
    let outcome = engine.start(&parent(&tag, false), &opts).await.unwrap();
    assert_eq!(outcome.state, RunState::Succeeded);

    let runs = engine.store().list_runs(50).await.unwrap();
    let children: Vec<_> = runs
        .iter()
        .filter(|r| r.lock_key.starts_with(&format!("child:{tag}")))
        .collect();
    assert_eq!(children.len(), 2);
    assert!(children.iter().all(|r| r.state == RunState::Succeeded));
    // Side by side: each child started before the other finished (its 400 ms nap included),
    // as the runs' own records say — not a wall-clock bound a busy machine could break.
    let (x, y) = (children[0], children[1]);
    let (x_end, y_end) = (x.finished_at.unwrap(), y.finished_at.unwrap());
    assert!(
        x.started_at < y_end && y.started_at < x_end,
        "the two children ran side by side: {:?}..{x_end:?} and {:?}..{y_end:?}",
        x.started_at,
        y.started_at
    );
    let record = engine.store().load_run(outcome.run_id).await.unwrap();
    let child_id = record.phases[0].output.as_ref().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(children.iter().any(|r| r.id.to_string() == child_id));

    let mut scoped = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let Event::PhaseSucceeded { phase, .. } = e {
            scoped.push(phase);
        }
    }
    for name in ["one/a", "one/b", "two/a", "two/b", "one", "two"] {
        assert!(scoped.iter().any(|p| p == name), "{name} in {scoped:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_child_fails_the_parent_and_names_its_run() {
    let engine = engine().await;
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let outcome = engine
        .start(&parent(&tag, true), &RunOptions::default())
        .await
        .unwrap();
    assert_eq!(outcome.state, RunState::RolledBack);
    let error = outcome.error.unwrap();
    assert!(
        error.contains("workflow `child`") && error.contains("ended rolled_back"),
        "{error}"
    );
    assert!(error.contains("nap refused"), "{error}");
}

#[tokio::test]
async fn an_unknown_child_workflow_is_refused_before_the_run() {
    let engine = engine().await;
    let yaml = "name: p\nphases:\n  - { id: x, type: workflow, workflow: nope }\n";
    let plan = Workflow::parse("p.yaml", yaml)
        .unwrap()
        .plan(&BTreeMap::new())
        .unwrap();
    let err = engine
        .start(&plan, &RunOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_invalid_input());
    assert!(err.to_string().contains("no workflow `nope`"), "{err}");
}
