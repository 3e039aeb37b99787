//! The state database enforces the run and phase state machines itself, so a bug in the engine
//! (or a hand-edited row) cannot record an impossible history.

use dive_engine::Store;
use sqlx::Connection;
use uuid::Uuid;

mod common;

async fn exec(store: &Store, sql: &'static str, run: Uuid) -> Result<(), String> {
    sqlx::query(sql)
        .bind(run)
        .execute(store.pool())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The test database, with a new `running` run in it.
async fn running_run() -> (Store, Uuid) {
    let store = Store::open(&common::db("schema").url).await.unwrap();
    let run = Uuid::now_v7();
    exec(
        &store,
        "INSERT INTO runs (id, workflow, lock_key, state, params, plan) \
         VALUES ($1, 'w', 'k', 'running', '{}', '{}')",
        run,
    )
    .await
    .unwrap();
    (store, run)
}

#[tokio::test]
async fn illegal_transitions_are_rejected_by_the_database() {
    let (store, run) = running_run().await;
    let err = exec(
        &store,
        "INSERT INTO phases (run_id, phase_id, state, attempt, output) VALUES ($1, 'a', 'succeeded', 1, '{}')",
        run,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("cannot be created in state succeeded"),
        "{err}"
    );

    exec(
        &store,
        "INSERT INTO phases (run_id, phase_id, state, attempt) VALUES ($1, 'a', 'running', 1)",
        run,
    )
    .await
    .unwrap();
    let err = exec(
        &store,
        "UPDATE phases SET state = 'compensated' WHERE run_id = $1",
        run,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("transition running -> compensated is not allowed"),
        "{err}"
    );
    let err = exec(
        &store,
        "UPDATE phases SET state = 'succeeded' WHERE run_id = $1",
        run,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("output"),
        "a succeeded phase needs its output: {err}"
    );
    for sql in [
        "UPDATE phases SET attempt = -1 WHERE run_id = $1",
        "INSERT INTO phases (run_id, phase_id, state, attempt) VALUES ($1, 'b', 'pending', -1)",
    ] {
        let err = exec(&store, sql, run).await.unwrap_err();
        assert!(err.contains("attempt -1 is negative"), "{sql}: {err}");
    }
    exec(
        &store,
        "UPDATE phases SET state = 'succeeded', output = '{}' WHERE run_id = $1",
        run,
    )
    .await
    .unwrap();
    let attempts: Vec<(i32, String)> =
        sqlx::query_as("SELECT attempt, state FROM phase_attempts WHERE run_id = $1")
            .bind(run)
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(attempts, vec![(1, "succeeded".to_string())]);

    exec(
        &store,
        "UPDATE runs SET state = 'succeeded' WHERE id = $1",
        run,
    )
    .await
    .unwrap();
    let err = exec(
        &store,
        "UPDATE runs SET state = 'running' WHERE id = $1",
        run,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("transition succeeded -> running is not allowed"),
        "{err}"
    );
}

/// Every attempt stays visible in `phase_attempts` — a failed one, the one that succeeded, and
/// that one again once the phase is compensated — though the checkpoint row holds only the last.
#[tokio::test]
async fn the_attempt_history_survives_retries_and_compensation() {
    let store = Store::open(&common::db("history").url).await.unwrap();
    let run = Uuid::now_v7();
    let steps: [&'static str; 7] = [
        "INSERT INTO runs (id, workflow, lock_key, state, params, plan) \
         VALUES ($1, 'w', 'k', 'running', '{}', '{}')",
        "INSERT INTO phases (run_id, phase_id, state, attempt) VALUES ($1, 'a', 'pending', 0)",
        "UPDATE phases SET state = 'running', attempt = 1 WHERE run_id = $1",
        "UPDATE phases SET state = 'failed', error = 'boom' WHERE run_id = $1",
        "UPDATE phases SET state = 'running', attempt = 2, error = NULL WHERE run_id = $1",
        "UPDATE phases SET state = 'succeeded', output = '{}' WHERE run_id = $1",
        "UPDATE phases SET state = 'compensating' WHERE run_id = $1",
    ];
    let history = || async {
        sqlx::query_as::<_, (i32, String, Option<String>)>(
            "SELECT attempt, state, error FROM phase_attempts WHERE run_id = $1 ORDER BY attempt",
        )
        .bind(run)
        .fetch_all(store.pool())
        .await
        .unwrap()
    };
    for (i, sql) in steps.iter().enumerate() {
        exec(&store, sql, run).await.unwrap();
        if i == 4 {
            assert_eq!(
                history().await,
                vec![
                    (1, "failed".into(), Some("boom".into())),
                    (2, "running".into(), None)
                ]
            );
        }
    }
    exec(
        &store,
        "UPDATE phases SET state = 'compensated' WHERE run_id = $1",
        run,
    )
    .await
    .unwrap();
    assert_eq!(
        history().await,
        vec![
            (1, "failed".into(), Some("boom".into())),
            (2, "succeeded".into(), None)
        ]
    );
    let compensation: String =
        sqlx::query_scalar("SELECT state FROM compensations WHERE run_id = $1")
            .bind(run)
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(compensation, "compensated");
}

/// Every (old, new) pair of phase states: the database's check and the engine's state machine
/// ([`PhaseState::can_become`]) allow exactly the same transitions.
#[tokio::test]
async fn the_database_and_the_engine_allow_the_same_phase_transitions() {
    use dive_engine::PhaseState;
    let (store, run) = running_run().await;
    let states: Vec<PhaseState> = [
        "pending",
        "running",
        "succeeded",
        "failed",
        "skipped",
        "compensating",
        "compensated",
        "compensation_failed",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let mut conn = store.pool().acquire().await.unwrap();
    let mut disagreements = Vec::new();
    for (i, from) in states.iter().enumerate() {
        for to in &states {
            let id = format!("{i}-{to}");
            // The starting state is written with the check off (some states cannot be reached
            // from `pending` in one step), in a transaction: its table lock keeps the other
            // tests of this database from writing while the check is off.
            let mut tx = conn.begin().await.unwrap();
            for sql in [
                "ALTER TABLE phases DISABLE TRIGGER USER",
                "INSERT INTO phases (run_id, phase_id, state, attempt, output) \
                 VALUES ($1, $2, $3, 1, '{}')",
                "ALTER TABLE phases ENABLE TRIGGER USER",
            ] {
                sqlx::query(sql)
                    .bind(run)
                    .bind(&id)
                    .bind(from.as_str())
                    .persistent(false)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
            let database =
                sqlx::query("UPDATE phases SET state = $3 WHERE run_id = $1 AND phase_id = $2")
                    .bind(run)
                    .bind(&id)
                    .bind(to.as_str())
                    .execute(&mut *conn)
                    .await
                    .is_ok();
            if database != from.can_become(*to) {
                disagreements.push(format!("{from} -> {to}: database allows it: {database}"));
            }
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}
