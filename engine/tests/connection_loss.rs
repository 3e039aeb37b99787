//! A run whose database session dies: it pauses, reconnects, takes its lock again and finishes;
//! or, if another session took the lock meanwhile, it stops (resumable) and says who holds it.

use dive_engine::{Engine, EngineError, Event, EventSink, PhaseState, RunOptions, RunState, Store};
use sqlx::Connection;
use std::time::Duration;
use tokio::sync::mpsc;

mod common;

const LOCK_PID: &str = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
     AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 0)";

/// Terminates the session holding `lock`'s advisory lock, as a network cut or server-side kill would.
async fn cut_lock_holder(store: &Store, lock: &str) -> i32 {
    let pid: i32 = sqlx::query_scalar(LOCK_PID)
        .bind(lock)
        .fetch_one(store.pool())
        .await
        .expect("the run holds its lock");
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(store.pool())
        .await
        .unwrap();
    pid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_is_replaced_and_the_run_finishes() {
    let store = Store::open(&common::db("connection-loss").url)
        .await
        .unwrap();
    let lock = format!("loss:{}", uuid::Uuid::now_v7());
    let plan = common::hold_chain(&format!("\"{lock}\""), 6, 150);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let opts = RunOptions {
        events: EventSink::new(tx),
        ..RunOptions::default()
    };
    let engine = Engine::new(store.clone());
    let run = tokio::spawn({
        let plan = plan.clone();
        async move { engine.start(&plan, &opts).await }
    });
    tokio::time::sleep(Duration::from_millis(350)).await;
    let old_pid = cut_lock_holder(&store, &lock).await;
    let outcome = run.await.unwrap().unwrap();
    assert_eq!(outcome.state, RunState::Succeeded);

    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::DatabaseUnavailable { .. }))
    );
    assert!(events.iter().any(|e| matches!(e, Event::DatabaseRestored)));
    let record = store.load_run(outcome.run_id).await.unwrap();
    assert!(
        record
            .phases
            .iter()
            .all(|p| p.state == PhaseState::Succeeded)
    );
    // The run re-took its lock on a new session before writing again; it released it at the end.
    let holder: Option<i32> = sqlx::query_scalar(LOCK_PID)
        .bind(&lock)
        .fetch_optional(store.pool())
        .await
        .unwrap();
    assert_eq!(
        holder, None,
        "lock released after the run (old session {old_pid})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_taken_during_the_outage_stops_the_run_resumably() {
    let db = common::db("connection-loss");
    let store = Store::open(&db.url).await.unwrap();
    let lock = format!("loss:{}", uuid::Uuid::now_v7());
    let plan = common::hold_chain(&format!("\"{lock}\""), 8, 150);
    let engine = std::sync::Arc::new(Engine::new(store.clone()));
    let run = tokio::spawn({
        let (engine, plan) = (engine.clone(), plan.clone());
        async move { engine.start(&plan, &RunOptions::default()).await }
    });
    tokio::time::sleep(Duration::from_millis(350)).await;

    // Another session grabs the lock the moment the run's session is gone.
    let intruder = uuid::Uuid::now_v7();
    cut_lock_holder(&store, &lock).await;
    let stolen_at = chrono::Utc::now();
    let other = common::steal_lock(&db.url, &lock, intruder).await;

    let err = run.await.unwrap().unwrap_err();
    match &err {
        EngineError::LockLost { holder, .. } => assert_eq!(*holder, Some(intruder)),
        other => panic!("expected LockLost, got {other}"),
    }
    assert!(err.to_string().contains(&intruder.to_string()));
    let run_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM runs WHERE lock_key = $1")
        .bind(&lock)
        .fetch_one(store.pool())
        .await
        .unwrap();
    let record = store.load_run(run_id).await.unwrap();
    assert_eq!(record.state, RunState::Failed);
    assert!(record.error.as_deref().unwrap_or("").contains("lost lock"));
    for p in &record.phases {
        assert!(
            p.started_at.is_none_or(|t| t < stolen_at),
            "phase {} started after the lock was lost",
            p.id
        );
    }

    // The intruder leaves; the stopped run resumes and finishes.
    other.close().await.unwrap();
    let mut outcome = None;
    for _ in 0..50 {
        match engine.resume(run_id, &RunOptions::default()).await {
            Err(EngineError::LockHeld { .. }) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => {
                outcome = Some(other.unwrap());
                break;
            }
        }
    }
    assert_eq!(outcome.expect("resumed").state, RunState::Succeeded);
}
