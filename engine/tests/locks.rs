//! Several lock keys per run: all taken (in sorted order) on the run's connection, all or none;
//! re-taken after a lost session; child runs run under the keys their ancestors hold and take
//! only the others; orphan detection looks at every key.

use dive_engine::{
    Engine, EngineError, Phase, PhaseContext, PhaseError, RunOptions, RunState, Store, Workflow,
    WorkflowCatalog, async_trait, typetag,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Connection;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

const LOCK_PID: &str = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
     AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 0)";

/// The backend pid holding `key`'s advisory lock, if any.
async fn holder_pid(store: &Store, key: &str) -> Option<i32> {
    sqlx::query_scalar(LOCK_PID)
        .bind(key)
        .fetch_optional(store.pool())
        .await
        .unwrap()
}

/// Reports which session holds each of `keys` and which keys the run says it runs under.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Probe {
    keys: Vec<String>,
    #[serde(default)]
    ms: u64,
}

#[typetag::serde(name = "probe")]
#[async_trait]
impl Phase for Probe {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let store = &ctx.store;
        let mut pids = serde_json::Map::new();
        for key in &self.keys {
            pids.insert(key.clone(), json!(holder_pid(store, key).await));
        }
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        Ok(json!({ "held": ctx.held_lock_keys, "pids": pids }))
    }
}

/// Fails the first time it runs for its tag, then succeeds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailOnce {
    tag: String,
}

static FAILED_ONCE: Mutex<Option<HashSet<String>>> = Mutex::new(None);

#[typetag::serde(name = "fail-once")]
#[async_trait]
impl Phase for FailOnce {
    async fn run(&self, _ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let first = FAILED_ONCE
            .lock()
            .unwrap()
            .get_or_insert_with(HashSet::new)
            .insert(self.tag.clone());
        if first {
            Err(PhaseError::fatal("first time fails"))
        } else {
            Ok(json!({}))
        }
    }
}

/// Child workflows, keyed by a `tag` parameter so tests do not collide.
struct Children;

impl WorkflowCatalog for Children {
    fn load(&self, name: &str) -> Result<Workflow, String> {
        let text = match name {
            // Takes a key its parent holds.
            "child-b" => {
                "name: child-b\nlock: \"${params.tag}:b\"\nparams:\n  tag: {}\nphases:\n  - { id: probe, type: probe, ms: 400, keys: [\"${params.tag}:a\", \"${params.tag}:b\"] }\n"
            }
            // Takes a key of its own, and runs a grandchild on a key its grandparent holds.
            "child-c" => {
                "name: child-c\nlock: [\"${params.tag}:c\", \"${params.tag}:b\"]\nparams:\n  tag: {}\nphases:\n  - { id: probe, type: probe, keys: [\"${params.tag}:a\", \"${params.tag}:b\", \"${params.tag}:c\"] }\n  - { id: grand, type: workflow, workflow: grand-a, params: { tag: \"${params.tag}\" }, after: [probe] }\n"
            }
            "grand-a" => {
                "name: grand-a\nlock: \"${params.tag}:a\"\nparams:\n  tag: {}\nphases:\n  - { id: probe, type: probe, keys: [\"${params.tag}:a\", \"${params.tag}:c\"] }\n"
            }
            other => return Err(format!("no workflow `{other}`")),
        };
        Workflow::parse(name, text).map_err(|e| e.to_string())
    }
}

async fn engine() -> Engine {
    let store = Store::open(&common::db("locks").url).await.unwrap();
    Engine::new(store).with_catalog(Arc::new(Children))
}

fn plan(yaml: &str) -> dive_engine::Plan {
    Workflow::parse("locks.yaml", yaml)
        .unwrap()
        .plan(&BTreeMap::new())
        .unwrap()
}

fn tag() -> String {
    format!("t{}", uuid::Uuid::now_v7().simple())
}

/// Lock keys with a holder row in `locks`.
async fn lock_rows(store: &Store, tag: &str) -> Vec<(String, uuid::Uuid)> {
    sqlx::query_as("SELECT key, run_id FROM locks WHERE key LIKE $1 ORDER BY key")
        .bind(format!("{tag}:%"))
        .fetch_all(store.pool())
        .await
        .unwrap()
}

/// Starts `plan` in the background and waits until it holds `key`.
async fn start_in_background(
    engine: &Arc<Engine>,
    plan: dive_engine::Plan,
    opts: RunOptions,
    key: &str,
) -> tokio::task::JoinHandle<Result<dive_engine::RunOutcome, EngineError>> {
    let run = tokio::spawn({
        let engine = engine.clone();
        async move { engine.start(&plan, &opts).await }
    });
    for _ in 0..500 {
        if holder_pid(engine.store(), key).await.is_some() {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the run never took `{key}`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_two_keys_blocks_either_and_releases_both() {
    let engine = Arc::new(engine().await);
    let store = engine.store().clone();
    let t = tag();
    let (a, b, z) = (format!("{t}:a"), format!("{t}:b"), format!("{t}:0"));
    let first = plan(&format!(
        "name: two\nlock: [\"{b}\", \"{a}\"]\nphases:\n  - {{ id: h, type: hold, ms: 800 }}\n"
    ));
    assert_eq!(first.lock_keys, [a.clone(), b.clone()]);
    let run = start_in_background(&engine, first, RunOptions::default(), &b).await;

    // One session holds both keys, and both have a holder row naming the run.
    let pid = holder_pid(&store, &a).await.expect("a held");
    assert_eq!(holder_pid(&store, &b).await, Some(pid));
    let rows = lock_rows(&store, &t).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let holder = rows[0].1;
    assert_eq!(rows[1].1, holder);

    // A second run on either key is refused, naming the key and the run holding it.
    for (key, lock) in [
        (&a, format!("\"{a}\"")),
        (&b, format!("\"{b}\"")),
        // Wants z (free, sorts first, so taken first) and b (held): b is refused, z let go.
        (&b, format!("[\"{b}\", \"{z}\"]")),
    ] {
        let second = plan(&format!(
            "name: other\nlock: {lock}\nphases:\n  - {{ id: h, type: hold, ms: 1 }}\n"
        ));
        match engine.start(&second, &RunOptions::default()).await {
            Err(EngineError::LockHeld { key: k, holder: h }) => {
                assert_eq!(&k, key);
                assert_eq!(h, Some(holder));
            }
            other => panic!("expected LockHeld on {key}, got {other:?}"),
        }
    }
    assert_eq!(holder_pid(&store, &z).await, None, "z released again");
    assert_eq!(lock_rows(&store, &t).await.len(), 2, "no row left for z");

    let outcome = run.await.unwrap().unwrap();
    assert_eq!(outcome.state, RunState::Succeeded);
    assert_eq!(outcome.run_id, holder);
    let record = store.load_run(outcome.run_id).await.unwrap();
    assert_eq!(record.lock_keys, [a.clone(), b.clone()]);
    assert_eq!(record.lock_key, a);
    assert_eq!(holder_pid(&store, &a).await, None);
    assert_eq!(holder_pid(&store, &b).await, None);
    assert!(lock_rows(&store, &t).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_taken_in_sorted_order_and_released_when_one_is_held() {
    let engine = engine().await;
    let store = engine.store().clone();
    let t = tag();
    let (a, b, c) = (format!("{t}:a"), format!("{t}:b"), format!("{t}:c"));
    // Another session holds b and c.
    let mut other = sqlx::PgConnection::connect(&common::db("locks").url)
        .await
        .unwrap();
    for key in [&b, &c] {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(key)
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert!(got);
    }
    // Written c, a, b: taken a, b, c — so b is the key refused (not c), and a is let go.
    let p = plan(&format!(
        "name: order\nlock: [\"{c}\", \"{a}\", \"{b}\"]\nphases:\n  - {{ id: h, type: hold, ms: 1 }}\n"
    ));
    match engine.start(&p, &RunOptions::default()).await {
        Err(EngineError::LockHeld { key, holder }) => {
            assert_eq!(key, b);
            assert_eq!(holder, None, "the other session recorded no holder");
        }
        other => panic!("expected LockHeld, got {other:?}"),
    }
    assert_eq!(holder_pid(&store, &a).await, None, "a released again");
    assert!(lock_rows(&store, &t).await.is_empty());
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE $1 = ANY(lock_keys)")
        .bind(&a)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(runs, 0, "a refused run writes nothing");

    common::release_all(other).await;
    let outcome = engine.start(&p, &RunOptions::default()).await.unwrap();
    assert_eq!(outcome.state, RunState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_runs_inherit_the_keys_their_ancestors_hold() {
    let engine = Arc::new(engine().await);
    let store = engine.store().clone();
    let t = tag();
    let (a, b, c) = (format!("{t}:a"), format!("{t}:b"), format!("{t}:c"));
    // Parent holds {a, b}; child-b wants b (inherited); child-c wants {b, c} (takes c) and runs
    // grand-a, which wants a (held by the grandparent).
    let parent = plan(&format!(
        "name: parent\nlock: [\"{a}\", \"{b}\"]\nphases:\n  - {{ id: one, type: workflow, workflow: child-b, params: {{ tag: \"{t}\" }} }}\n  - {{ id: two, type: workflow, workflow: child-c, params: {{ tag: \"{t}\" }}, after: [one] }}\n"
    ));
    let run = start_in_background(&engine, parent, RunOptions::default(), &b).await;

    // While the parent runs, a separate run on a is refused, naming the parent.
    let intruder = plan(&format!(
        "name: intruder\nlock: \"{a}\"\nphases:\n  - {{ id: h, type: hold, ms: 1 }}\n"
    ));
    let parent_id = match engine.start(&intruder, &RunOptions::default()).await {
        Err(EngineError::LockHeld { key, holder }) => {
            assert_eq!(key, a);
            holder.expect("holder recorded")
        }
        other => panic!("expected LockHeld, got {other:?}"),
    };

    let outcome = run.await.unwrap().unwrap();
    assert_eq!(outcome.state, RunState::Succeeded, "{:?}", outcome.error);
    assert_eq!(outcome.run_id, parent_id);

    let parent = store.load_run(parent_id).await.unwrap();
    let child = |i: usize| -> uuid::Uuid {
        parent.phases[i].output.as_ref().unwrap()["run_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let probe = |record: &dive_engine::store::RunRecord| -> Value {
        record.phases[0].output.clone().expect("probe output")
    };

    // child-b ran under the parent's lock on b: the parent's session held it throughout.
    let child_b = store.load_run(child(0)).await.unwrap();
    assert_eq!(child_b.state, RunState::Succeeded);
    assert_eq!(child_b.lock_keys, [b.as_str()]);
    let seen = probe(&child_b);
    assert_eq!(seen["held"], json!([a, b]));
    assert_eq!(seen["pids"][&a], seen["pids"][&b]);

    // child-c took c on its own session and inherited b.
    let child_c = store.load_run(child(1)).await.unwrap();
    assert_eq!(child_c.state, RunState::Succeeded);
    assert_eq!(child_c.lock_keys, [b.clone(), c.clone()]);
    let seen = probe(&child_c);
    assert_eq!(seen["held"], json!([a, b, c]));
    assert_eq!(seen["pids"][&a], seen["pids"][&b]);
    assert!(seen["pids"][&c].is_number());
    assert_ne!(seen["pids"][&c], seen["pids"][&a]);

    // grand-a ran under its grandparent's a, and saw every ancestor key.
    let grand_id: uuid::Uuid = child_c.phases[1].output.as_ref().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let grand = store.load_run(grand_id).await.unwrap();
    assert_eq!(grand.state, RunState::Succeeded);
    assert_eq!(grand.lock_keys, [a.as_str()]);
    let seen = probe(&grand);
    assert_eq!(seen["held"], json!([a, b, c]));

    // Everything is free again.
    for key in [&a, &b, &c] {
        assert_eq!(holder_pid(&store, key).await, None, "{key} released");
    }
    assert!(lock_rows(&store, &t).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_resumed_on_its_own_takes_all_its_keys() {
    let engine = engine().await;
    let store = engine.store().clone();
    let t = tag();
    let (a, b) = (format!("{t}:a"), format!("{t}:b"));
    // A stand-in parent session holds a.
    let mut parent = sqlx::PgConnection::connect(&common::db("locks").url)
        .await
        .unwrap();
    let parent_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut parent)
        .await
        .unwrap();
    let _: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(&a)
        .fetch_one(&mut parent)
        .await
        .unwrap();
    let child = plan(&format!(
        "name: child\nlock: [\"{a}\", \"{b}\"]\nphases:\n  - {{ id: before, type: probe, keys: [\"{a}\", \"{b}\"] }}\n  - {{ id: flaky, type: fail-once, tag: \"{t}\", after: [before] }}\n  - {{ id: after, type: probe, keys: [\"{a}\", \"{b}\"], after: [flaky] }}\n"
    ));
    let opts = RunOptions {
        held_lock_keys: vec![a.clone()],
        no_rollback: true,
        ..RunOptions::default()
    };
    let outcome = engine.start(&child, &opts).await.unwrap();
    assert_eq!(outcome.state, RunState::Failed);
    let record = store.load_run(outcome.run_id).await.unwrap();
    let before = record.phases[0].output.clone().unwrap();
    assert_eq!(
        before["pids"][&a],
        json!(parent_pid),
        "a stayed the parent's"
    );
    assert!(before["pids"][&b].is_number());
    assert_ne!(before["pids"][&b], json!(parent_pid));

    // Resumed alone (as `dive resume CHILD_ID` does): it takes a too, so it waits for the parent.
    match engine.resume(outcome.run_id, &RunOptions::default()).await {
        Err(EngineError::LockHeld { key, .. }) => assert_eq!(key, a),
        other => panic!("expected LockHeld on {a}, got {other:?}"),
    }
    assert_eq!(holder_pid(&store, &b).await, None, "b not left held");
    common::release_all(parent).await;
    let outcome = engine
        .resume(outcome.run_id, &RunOptions::default())
        .await
        .unwrap();
    assert_eq!(outcome.state, RunState::Succeeded);
    let record = store.load_run(outcome.run_id).await.unwrap();
    let after = record.phases[2].output.clone().unwrap();
    assert!(after["pids"][&a].is_number());
    assert_eq!(
        after["pids"][&a], after["pids"][&b],
        "one session holds both"
    );
    assert_eq!(after["held"], json!([a, b]));
}

/// Terminates the session holding `key`'s advisory lock, as a network cut would.
async fn cut_holder(store: &Store, key: &str) -> i32 {
    let pid = holder_pid(store, key).await.expect("held");
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(store.pool())
        .await
        .unwrap();
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_session_every_key_is_taken_again() {
    let engine = Arc::new(engine().await);
    let store = engine.store().clone();
    let t = tag();
    let (a, b) = (format!("{t}:a"), format!("{t}:b"));
    let p = common::hold_chain(&format!("[\"{b}\", \"{a}\"]"), 8, 150);
    let run = start_in_background(&engine, p, RunOptions::default(), &b).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let old = cut_holder(&store, &a).await;

    // A new session takes both keys again.
    let mut new = None;
    for _ in 0..400 {
        if let Some(pid) = holder_pid(&store, &b).await
            && pid != old
        {
            new = Some(pid);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let new = new.expect("b taken again on a new session");
    let mut a_pid = None;
    for _ in 0..400 {
        a_pid = holder_pid(&store, &a).await;
        if a_pid.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(a_pid, Some(new), "a taken again by the same session");
    assert_eq!(lock_rows(&store, &t).await.len(), 2);

    let outcome = run.await.unwrap().unwrap();
    assert_eq!(outcome.state, RunState::Succeeded);
    assert_eq!(holder_pid(&store, &a).await, None);
    assert_eq!(holder_pid(&store, &b).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_second_key_in_an_outage_stops_the_run_and_frees_the_first() {
    let db = common::db("locks");
    let engine = Arc::new(engine().await);
    let store = engine.store().clone();
    let t = tag();
    let (a, b) = (format!("{t}:a"), format!("{t}:b"));
    let p = common::hold_chain(&format!("[\"{a}\", \"{b}\"]"), 8, 150);
    let run = start_in_background(&engine, p, RunOptions::default(), &b).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Another session grabs b the moment the run's session is gone.
    let intruder = uuid::Uuid::now_v7();
    cut_holder(&store, &a).await;
    let other = common::steal_lock(&db.url, &b, intruder).await;

    let err = run.await.unwrap().unwrap_err();
    let run_id = match &err {
        EngineError::LockLost { key, holder, run } => {
            assert_eq!(key, &b);
            assert_eq!(*holder, Some(intruder));
            *run
        }
        other => panic!("expected LockLost, got {other}"),
    };
    assert_eq!(holder_pid(&store, &a).await, None, "a let go again");
    let record = store.load_run(run_id).await.unwrap();
    assert_eq!(record.state, RunState::Failed);
    assert!(
        record.error.as_deref().unwrap_or("").contains(&b),
        "{:?}",
        record.error
    );
    other.close().await.unwrap();
}

#[tokio::test]
async fn a_run_is_orphaned_only_when_none_of_its_keys_is_held() {
    let db = common::db("locks");
    let store = Store::open(&db.url).await.unwrap();
    let t = tag();
    let (a, b) = (format!("{t}:a"), format!("{t}:b"));
    // A plan as older versions stored it: one `lock_key`.
    let old_plan = json!({
        "workflow": "old", "source": "old.yaml", "lock_key": a, "params": {}, "phases": [],
    });
    let two = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO runs (id, workflow, lock_keys, state, params, plan) \
         VALUES ($1, 'two', $2, 'running', '{}', $3)",
    )
    .bind(two)
    .bind(vec![a.clone(), b.clone()])
    .bind(&old_plan)
    .execute(store.pool())
    .await
    .unwrap();
    // Written the one-key way: the trigger fills `lock_keys`.
    let one = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO runs (id, workflow, lock_key, state, params, plan) \
         VALUES ($1, 'one', $2, 'running', '{}', $3)",
    )
    .bind(one)
    .bind(&b)
    .bind(&old_plan)
    .execute(store.pool())
    .await
    .unwrap();

    let record = store.load_run(two).await.unwrap();
    assert_eq!(record.lock_key, a, "filled from lock_keys");
    assert_eq!(record.plan.lock_keys, [a.as_str()], "old plan loads");
    assert!(record.orphaned);
    let record = store.load_run(one).await.unwrap();
    assert_eq!(record.lock_keys, [b.as_str()]);
    assert!(record.orphaned);

    // Holding b (only) makes both live.
    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let _: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(&b)
        .fetch_one(&mut holder)
        .await
        .unwrap();
    assert!(!store.load_run(two).await.unwrap().orphaned);
    assert!(!store.load_run(one).await.unwrap().orphaned);
    let listed = store.list_runs(500).await.unwrap();
    let two_listed = listed.iter().find(|r| r.id == two).unwrap();
    assert!(!two_listed.orphaned);
    assert_eq!(two_listed.lock_keys, [a.clone(), b.clone()]);
    common::release_all(holder).await;
    assert!(store.load_run(two).await.unwrap().orphaned);

    // Cancelling the orphan takes (and gives back) both keys.
    assert_eq!(
        store.cancel(two).await.unwrap(),
        dive_engine::store::CancelOutcome::MarkedCancelled
    );
    assert_eq!(
        store.load_run(two).await.unwrap().state,
        RunState::Cancelled
    );
    assert_eq!(holder_pid(&store, &a).await, None);
    assert_eq!(holder_pid(&store, &b).await, None);
}
