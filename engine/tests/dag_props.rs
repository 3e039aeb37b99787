//! Property tests of the engine against a real PostgreSQL: random DAGs run in dependency order
//! exactly once; rollback compensates exactly the succeeded compensable phases in reverse
//! dependency order; a crash at a random phase followed by resume re-runs no succeeded phase.

use dive_engine::{
    Engine, Phase, PhaseContext, PhaseError, PhaseState, RunOptions, RunState, Store, Workflow,
    async_trait, typetag,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

mod common;

/// What probes did, per test scope: (event, phase) in the order it happened.
#[derive(Default)]
struct Scope {
    log: Vec<(&'static str, String)>,
    crash: Option<oneshot::Sender<()>>,
}

static SCOPES: LazyLock<Mutex<HashMap<String, Scope>>> = LazyLock::new(Default::default);

fn record(scope: &str, event: &'static str, phase: &str) {
    SCOPES
        .lock()
        .unwrap()
        .entry(scope.to_string())
        .or_default()
        .log
        .push((event, phase.to_string()));
}

/// A test phase that logs what it does, and can fail or "crash" (hang until the test aborts
/// the engine) on request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Probe {
    scope: String,
    #[serde(default)]
    fail: bool,
    #[serde(default)]
    compensable: bool,
    #[serde(default)]
    crash: bool,
}

#[typetag::serde(name = "probe")]
#[async_trait]
impl Phase for Probe {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        record(&self.scope, "start", &ctx.phase_id);
        tokio::task::yield_now().await;
        if self.crash {
            let tx = SCOPES
                .lock()
                .unwrap()
                .get_mut(&self.scope)
                .and_then(|s| s.crash.take());
            if let Some(tx) = tx {
                let _ = tx.send(());
                std::future::pending::<()>().await;
            }
        }
        if self.fail {
            return Err(PhaseError::fatal("probe told to fail"));
        }
        record(&self.scope, "end", &ctx.phase_id);
        Ok(json!({ "phase": ctx.phase_id }))
    }

    fn has_compensation(&self) -> bool {
        self.compensable
    }

    async fn compensate(&self, ctx: &PhaseContext, output: &Value) -> Result<(), PhaseError> {
        assert_eq!(
            output["phase"],
            json!(ctx.phase_id),
            "compensation gets the phase's output"
        );
        record(&self.scope, "comp", &ctx.phase_id);
        Ok(())
    }
}

fn db() -> &'static common::Db {
    common::db("dag-props")
}

/// A DAG: for each phase, its dependencies (all with lower index).
fn dag_strategy() -> impl Strategy<Value = Vec<Vec<usize>>> {
    (1..12usize).prop_flat_map(|n| {
        proptest::collection::vec(proptest::collection::vec(any::<Index>(), 0..3), n).prop_map(
            |raw| {
                raw.into_iter()
                    .enumerate()
                    .map(|(i, idx)| {
                        let mut deps: Vec<usize> = if i == 0 {
                            vec![]
                        } else {
                            idx.iter().map(|x| x.index(i)).collect()
                        };
                        deps.sort();
                        deps.dedup();
                        deps
                    })
                    .collect()
            },
        )
    })
}

fn yaml(scope: &str, deps: &[Vec<usize>], extra: impl Fn(usize) -> String) -> String {
    let mut y = format!("name: props\nlock: \"props:{scope}\"\nphases:\n");
    for (i, d) in deps.iter().enumerate() {
        let after: Vec<String> = d.iter().map(|j| format!("p{j}")).collect();
        y.push_str(&format!(
            "  - {{ id: p{i}, type: probe, scope: \"{scope}\", after: [{}]{} }}\n",
            after.join(", "),
            extra(i)
        ));
    }
    y
}

fn take_log(scope: &str) -> Vec<(&'static str, String)> {
    SCOPES
        .lock()
        .unwrap()
        .remove(scope)
        .map(|s| s.log)
        .unwrap_or_default()
}

fn position(log: &[(&'static str, String)], event: &str, phase: &str) -> Option<usize> {
    log.iter().position(|(e, p)| *e == event && p == phase)
}

fn ancestors(deps: &[Vec<usize>], i: usize) -> HashSet<usize> {
    let mut seen = HashSet::new();
    let mut stack = deps[i].clone();
    while let Some(j) = stack.pop() {
        if seen.insert(j) {
            stack.extend(&deps[j]);
        }
    }
    seen
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn new_scope() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn every_phase_runs_once_after_its_dependencies(deps in dag_strategy(), concurrency in 1..5usize) {
        let rt = runtime();
        let scope = new_scope();
        let plan = Workflow::parse("props.yaml", &yaml(&scope, &deps, |_| String::new()))
            .unwrap()
            .plan(&BTreeMap::new())
            .unwrap();
        let outcome = rt.block_on(async {
            let engine = Engine::new(Store::open(&db().url).await.unwrap());
            engine.start(&plan, &RunOptions { concurrency, ..RunOptions::default() }).await.unwrap()
        });
        prop_assert_eq!(outcome.state, RunState::Succeeded);
        let log = take_log(&scope);
        for (i, d) in deps.iter().enumerate() {
            let id = format!("p{i}");
            let starts = log.iter().filter(|(e, p)| *e == "start" && *p == id).count();
            prop_assert_eq!(starts, 1, "phase {} started {} times", id, starts);
            let start = position(&log, "start", &id).unwrap();
            for j in d {
                let end = position(&log, "end", &format!("p{j}")).unwrap();
                prop_assert!(end < start, "p{} started before its dependency p{} ended", i, j);
            }
        }
    }

    #[test]
    fn rollback_compensates_succeeded_phases_in_reverse_order(
        deps in dag_strategy(),
        failing in any::<Index>(),
        compensable in proptest::collection::vec(any::<bool>(), 12),
        concurrency in 1..5usize,
    ) {
        let rt = runtime();
        let scope = new_scope();
        let f = failing.index(deps.len());
        let text = yaml(&scope, &deps, |i| {
            format!(", fail: {}, compensable: {}", i == f, compensable[i])
        });
        let plan = Workflow::parse("props.yaml", &text).unwrap().plan(&BTreeMap::new()).unwrap();
        let (outcome, record) = rt.block_on(async {
            let engine = Engine::new(Store::open(&db().url).await.unwrap());
            let outcome = engine
                .start(&plan, &RunOptions { concurrency, ..RunOptions::default() })
                .await
                .unwrap();
            let record = engine.store().load_run(outcome.run_id).await.unwrap();
            (outcome, record)
        });
        prop_assert_eq!(outcome.state, RunState::RolledBack);
        let log = take_log(&scope);
        let succeeded: HashSet<usize> = (0..deps.len())
            .filter(|i| position(&log, "end", &format!("p{i}")).is_some())
            .collect();
        let compensated: HashSet<usize> = (0..deps.len())
            .filter(|i| position(&log, "comp", &format!("p{i}")).is_some())
            .collect();
        let expected: HashSet<usize> =
            succeeded.iter().copied().filter(|&i| compensable[i]).collect();
        prop_assert_eq!(&compensated, &expected);
        for &b in &compensated {
            for a in ancestors(&deps, b) {
                if compensated.contains(&a) {
                    let cb = position(&log, "comp", &format!("p{b}")).unwrap();
                    let ca = position(&log, "comp", &format!("p{a}")).unwrap();
                    prop_assert!(cb < ca, "p{} compensated before its dependent p{}", a, b);
                }
            }
        }
        for (i, phase) in record.phases.iter().enumerate() {
            let want = if i == f {
                PhaseState::Failed
            } else if compensated.contains(&i) {
                PhaseState::Compensated
            } else if succeeded.contains(&i) {
                PhaseState::Succeeded
            } else {
                PhaseState::Skipped
            };
            prop_assert_eq!(phase.state, want, "stored state of p{}", i);
        }
    }

    #[test]
    fn resume_after_a_crash_reruns_no_succeeded_phase(
        deps in dag_strategy(),
        crash_at in any::<Index>(),
        concurrency in 1..5usize,
    ) {
        let rt = runtime();
        let scope = new_scope();
        let k = crash_at.index(deps.len());
        let text = yaml(&scope, &deps, |i| format!(", crash: {}", i == k));
        let plan = Workflow::parse("props.yaml", &text).unwrap().plan(&BTreeMap::new()).unwrap();
        let (crash_tx, crash_rx) = oneshot::channel();
        SCOPES.lock().unwrap().entry(scope.clone()).or_default().crash = Some(crash_tx);
        let (before, outcome) = rt.block_on(async {
            let store = Store::open(&db().url).await.unwrap();
            let engine = std::sync::Arc::new(Engine::new(store.clone()));
            let opts = RunOptions { concurrency, ..RunOptions::default() };
            let task = {
                let engine = engine.clone();
                let plan = plan.clone();
                let opts = opts.clone();
                tokio::spawn(async move { engine.start(&plan, &opts).await })
            };
            crash_rx.await.expect("the crash phase runs");
            // The process "dies": the run's future and its connection are dropped mid-flight.
            task.abort();
            let _ = task.await;
            let run_id: uuid::Uuid = sqlx::query_scalar(
                "SELECT id FROM runs WHERE lock_key = $1",
            )
            .bind(format!("props:{scope}"))
            .fetch_one(store.pool())
            .await
            .unwrap();
            let before = store.load_run(run_id).await.unwrap();
            // The server notices the dropped session and frees the lock shortly.
            let mut attempt = 0;
            let outcome = loop {
                match engine.resume(run_id, &opts).await {
                    Err(dive_engine::EngineError::LockHeld { .. }) if attempt < 50 => {
                        attempt += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => break other.unwrap(),
                }
            };
            (before, outcome)
        });
        prop_assert_eq!(outcome.state, RunState::Succeeded);
        let log = take_log(&scope);
        for p in before.phases.iter().filter(|p| p.state == PhaseState::Succeeded) {
            let starts = log.iter().filter(|(e, id)| *e == "start" && *id == p.id).count();
            prop_assert_eq!(starts, 1, "succeeded phase {} ran again after resume", &p.id);
        }
        for i in 0..deps.len() {
            prop_assert!(position(&log, "end", &format!("p{i}")).is_some(), "p{} never finished", i);
        }
    }
}
