//! The connection a run keeps for its whole life: it holds the run's advisory locks (one per lock
//! key, taken in sorted order) and carries every checkpoint write. When the database goes away,
//! writes wait and retry; after a reconnect every key is taken again before anything else is
//! written, and if another run took one meanwhile this run stops.
//!
//! A child run (a `workflow` phase) does not take the keys its ancestors already hold — their
//! sessions hold them for it — so its connection may hold only some of its keys, or none.

use crate::error::EngineError;
use crate::events::{Event, EventSink};
use crate::plan::Plan;
use crate::scheduler::PhaseRow;
use crate::state::{PhaseState, RunState};
use crate::store::connect_options;
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// A durable write; each is one round trip and one commit.
pub(crate) enum Op<'a> {
    /// Upserts checkpoint rows (no phase twice in one batch).
    Phases(&'a [PhaseRow]),
    /// Moves one phase to a compensation state, keeping its output.
    PhaseState {
        phase_id: &'a str,
        state: PhaseState,
        error: Option<&'a str>,
    },
    RunState {
        state: RunState,
        error: Option<&'a str>,
        finished: bool,
    },
    Breakers(&'a [(String, String, DateTime<Utc>)]),
    /// Reads whether an operator asked this run to stop (and proves the connection alive).
    PollCancel,
}

/// A checkpoint: a phase's result and its dependents' start, from typed arrays (no JSON to
/// encode and parse on the hot path). Every row exists since the run was created (`pending`),
/// so the update is in place; the insert covers runs recorded before that was so.
const UPSERT_PHASES: &str = "INSERT INTO phases AS p (run_id, phase_id, state, attempt, started_at, finished_at, output, error) \
     SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int[], $5::timestamptz[], \
          $6::timestamptz[], $7::jsonb[], $8::text[]) \
     ON CONFLICT (run_id, phase_id) DO UPDATE SET state = EXCLUDED.state, attempt = EXCLUDED.attempt, \
          started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, output = EXCLUDED.output, \
          error = EXCLUDED.error";

pub(crate) struct RunConn {
    url: String,
    conn: Option<PgConnection>,
    /// The keys this connection holds (sorted): the run's keys minus those held by ancestors.
    pub lock_keys: Vec<String>,
    pub run_id: Uuid,
    events: EventSink,
    cancel: CancellationToken,
}

impl RunConn {
    /// Connects and takes every key in `lock_keys` (in sorted order), failing at once — with
    /// the keys it took released again, and the refusal recorded for the metrics — if another
    /// run holds one.
    pub async fn acquire(
        url: &str,
        workflow: &str,
        lock_keys: &[String],
        run_id: Uuid,
        events: EventSink,
        cancel: CancellationToken,
    ) -> Result<RunConn, EngineError> {
        let lock_keys = crate::plan::normalise_lock_keys(lock_keys.iter().cloned());
        let mut conn = PgConnection::connect_with(&connect_options(url)?).await?;
        if let Some(key) = take_locks(&mut conn, &lock_keys, run_id).await? {
            let holder = lock_holder(&mut conn, &key).await?;
            sqlx::query("INSERT INTO lock_refusals (key, workflow, holder) VALUES ($1, $2, $3)")
                .bind(&key)
                .bind(workflow)
                .bind(holder)
                .execute(&mut conn)
                .await?;
            return Err(EngineError::LockHeld { key, holder });
        }
        Ok(RunConn {
            url: url.to_string(),
            conn: Some(conn),
            lock_keys,
            run_id,
            events,
            cancel,
        })
    }

    /// Records a new run.
    pub async fn create_run(
        &mut self,
        plan: &Plan,
        no_rollback: bool,
        parent: Option<&(Uuid, String)>,
    ) -> Result<(), EngineError> {
        let conn = self.conn.as_mut().expect("connected after acquire");
        // Every phase gets its checkpoint row now, `pending`, so that each later checkpoint
        // updates rows in place instead of inserting them.
        let phase_ids: Vec<&str> = plan.phases.iter().map(|p| p.id.as_str()).collect();
        let phase_types: Vec<&str> = plan.phases.iter().map(|p| p.kind.as_str()).collect();
        sqlx::query(
            "WITH run AS (INSERT INTO runs (id, workflow, lock_key, lock_keys, state, params, plan, \
             no_rollback, parent_run_id, parent_key) \
             VALUES ($1, $2, $3[1], $3, 'running', $4, $5, $6, $8, $9) RETURNING id) \
             INSERT INTO phases (run_id, phase_id, phase_type, state, attempt) \
             SELECT run.id, p.id, p.type, 'pending', 0 FROM run, unnest($7::text[], $10::text[]) AS p(id, type)",
        )
        .bind(self.run_id)
        .bind(&plan.workflow)
        .bind(&plan.lock_keys)
        .bind(serde_json::to_value(&plan.params).expect("params serialise"))
        .bind(serde_json::to_value(plan).expect("plan serialises"))
        .bind(no_rollback)
        .bind(phase_ids)
        .bind(parent.map(|p| p.0))
        .bind(parent.map(|p| p.1.as_str()))
        .bind(phase_types)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Performs `op`, waiting out database outages. Returns whether a cancel was requested (for
    /// [`Op::PollCancel`]; false otherwise).
    pub async fn write(&mut self, op: Op<'_>) -> Result<bool, EngineError> {
        let mut attempt = 0u32;
        let mut delays = backoff();
        loop {
            self.connect().await?;
            let conn = self.conn.as_mut().expect("connected");
            match apply(conn, self.run_id, &op).await {
                Ok(cancel) => {
                    if attempt > 0 {
                        self.events.emit(Event::DatabaseRestored);
                    }
                    return Ok(cancel);
                }
                Err(e) if dive_error::is_db_unavailable(&e) => {
                    self.conn = None;
                    attempt += 1;
                    self.wait(attempt, &e, &mut delays).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Releases the locks (the connection closing would too) and removes our holder rows. When
    /// the session died after the last write (a terminated backend, a restart), its advisory
    /// locks are gone with it but its rows are not: a fresh session removes them, a few tries
    /// over some seconds. A row still left shows as not held, and `dive locks clean` forgets it.
    pub async fn release(mut self) {
        if self.lock_keys.is_empty() {
            return;
        }
        if let Some(conn) = self.conn.as_mut()
            && release_locks(conn, &self.lock_keys, self.run_id)
                .await
                .is_ok()
        {
            return;
        }
        self.conn = None;
        for delay in backoff().take(8) {
            let forgotten = async {
                let mut conn = PgConnection::connect_with(&connect_options(&self.url)?).await?;
                forget_holder_rows(&mut conn, &self.lock_keys, self.run_id).await?;
                Ok::<_, EngineError>(())
            }
            .await;
            if forgotten.is_ok() {
                return;
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// Reconnects if needed, and takes every lock again on the new session.
    async fn connect(&mut self) -> Result<(), EngineError> {
        let mut attempt = 0u32;
        let mut delays = backoff();
        while self.conn.is_none() {
            let result = async {
                let mut conn = PgConnection::connect_with(&connect_options(&self.url)?).await?;
                let refused = take_locks(&mut conn, &self.lock_keys, self.run_id).await?;
                Ok::<_, EngineError>((conn, refused))
            }
            .await;
            match result {
                Ok((conn, None)) => {
                    self.conn = Some(conn);
                    if attempt > 0 {
                        self.events.emit(Event::DatabaseRestored);
                    }
                }
                Ok((mut conn, Some(key))) => {
                    let holder = lock_holder(&mut conn, &key).await.ok().flatten();
                    // Our own row still says running; say why it stopped. It stays resumable.
                    let _ = sqlx::query(
                        "UPDATE runs SET state = 'failed', error = $2 WHERE id = $1 AND state = 'running'",
                    )
                    .bind(self.run_id)
                    .bind(format!(
                        "lost lock `{}` during a database outage to run {}",
                        key,
                        holder.map(|h| h.to_string()).unwrap_or_else(|| "(unknown)".into())
                    ))
                    .execute(&mut conn)
                    .await;
                    return Err(EngineError::LockLost {
                        key,
                        holder,
                        run: self.run_id,
                    });
                }
                Err(EngineError::Store(e)) if dive_error::is_db_unavailable(&e) => {
                    attempt += 1;
                    self.wait(attempt, &e, &mut delays).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn wait(
        &self,
        attempt: u32,
        error: &sqlx::Error,
        delays: &mut impl Iterator<Item = Duration>,
    ) -> Result<(), EngineError> {
        let retry_in = delays.next().unwrap_or(Duration::from_secs(5));
        self.events.emit(Event::DatabaseUnavailable {
            attempt,
            error: error.to_string(),
            retry_in,
        });
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => Ok(()),
            _ = self.cancel.cancelled() => Err(EngineError::Interrupted(self.run_id)),
        }
    }
}

/// Reconnect delays: quick at first, then every few seconds, for as long as it takes.
fn backoff() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(3))
        .with_jitter()
        .without_max_times()
        .build()
}

async fn apply(conn: &mut PgConnection, run_id: Uuid, op: &Op<'_>) -> Result<bool, sqlx::Error> {
    match op {
        Op::Phases(rows) => {
            sqlx::query(UPSERT_PHASES)
                .bind(run_id)
                .bind(rows.iter().map(|r| r.phase_id.as_str()).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.state.as_str()).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.attempt as i32).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.started_at).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.finished_at).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.output.clone()).collect::<Vec<_>>())
                .bind(rows.iter().map(|r| r.error.as_deref()).collect::<Vec<_>>())
                .execute(conn)
                .await?;
        }
        Op::PhaseState {
            phase_id,
            state,
            error,
        } => {
            sqlx::query(
                "UPDATE phases SET state = $3, error = $4 WHERE run_id = $1 AND phase_id = $2",
            )
            .bind(run_id)
            .bind(phase_id)
            .bind(state.as_str())
            .bind(error)
            .execute(conn)
            .await?;
        }
        Op::RunState {
            state,
            error,
            finished,
        } => {
            sqlx::query(
                "UPDATE runs SET state = $2, error = $3, cancel_requested = false, \
                 finished_at = CASE WHEN $4 THEN now() END WHERE id = $1",
            )
            .bind(run_id)
            .bind(state.as_str())
            .bind(error)
            .bind(finished)
            .execute(conn)
            .await?;
        }
        Op::Breakers(events) => {
            let keys: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
            let transitions: Vec<&str> = events.iter().map(|e| e.1.as_str()).collect();
            let ats: Vec<DateTime<Utc>> = events.iter().map(|e| e.2).collect();
            sqlx::query(
                "INSERT INTO breaker_events (run_id, breaker, transition, at) \
                 SELECT $1, * FROM unnest($2::text[], $3::text[], $4::timestamptz[])",
            )
            .bind(run_id)
            .bind(keys)
            .bind(transitions)
            .bind(ats)
            .execute(conn)
            .await?;
        }
        Op::PollCancel => {
            return sqlx::query_scalar("SELECT cancel_requested FROM runs WHERE id = $1")
                .bind(run_id)
                .fetch_optional(conn)
                .await
                .map(|c| c.unwrap_or(false));
        }
    }
    Ok(false)
}

/// Takes every key in `keys` (already sorted) and records us as their holder. When one is held
/// by another session, releases the ones it took and returns that key.
async fn take_locks(
    conn: &mut PgConnection,
    keys: &[String],
    run_id: Uuid,
) -> Result<Option<String>, EngineError> {
    for (i, key) in keys.iter().enumerate() {
        match take_lock(conn, key, run_id).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = release_locks(conn, &keys[..i], run_id).await;
                return Ok(Some(key.clone()));
            }
            Err(e) => {
                let _ = release_locks(conn, &keys[..i], run_id).await;
                return Err(e);
            }
        }
    }
    Ok(None)
}

/// Removes our holder rows and unlocks `keys` on this session. Fails only when the rows could
/// not be removed: a closing session frees its advisory locks anyway.
async fn release_locks(
    conn: &mut PgConnection,
    keys: &[String],
    run_id: Uuid,
) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    forget_holder_rows(conn, keys, run_id).await?;
    for key in keys.iter().rev() {
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(key)
            .execute(&mut *conn)
            .await;
    }
    Ok(())
}

/// Deletes the rows that name this run as the holder of `keys` (never another run's).
async fn forget_holder_rows(
    conn: &mut PgConnection,
    keys: &[String],
    run_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM locks WHERE key = ANY($1) AND run_id = $2")
        .bind(keys)
        .bind(run_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Tries the advisory lock and, when it is ours, records us as its holder.
async fn take_lock(conn: &mut PgConnection, key: &str, run_id: Uuid) -> Result<bool, EngineError> {
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(key)
        .fetch_one(&mut *conn)
        .await?;
    if got {
        record_holder(conn, key, run_id).await?;
    }
    Ok(got)
}

async fn record_holder(
    conn: &mut PgConnection,
    key: &str,
    run_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO locks (key, run_id, pid, host) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (key) DO UPDATE SET run_id = EXCLUDED.run_id, pid = EXCLUDED.pid, \
         host = EXCLUDED.host, acquired_at = now()",
    )
    .bind(key)
    .bind(run_id)
    .bind(std::process::id() as i32)
    .bind(hostname())
    .execute(conn)
    .await?;
    Ok(())
}

async fn lock_holder(conn: &mut PgConnection, key: &str) -> Result<Option<Uuid>, EngineError> {
    Ok(
        sqlx::query_scalar("SELECT run_id FROM locks WHERE key = $1")
            .bind(key)
            .fetch_optional(conn)
            .await?,
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use dive_pgcluster::{Cluster, StopMode};

    /// A session that dies between a run's last write and its release (a terminated backend)
    /// takes its advisory lock with it; release must still remove the holder row, or the
    /// database keeps a lock row that no session holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn release_after_a_lost_session_leaves_no_holder_row() {
        let root = std::env::temp_dir().join(format!("dive-runconn-{}", Uuid::now_v7()));
        let cluster = Cluster::new(&root);
        cluster.ensure_running().expect("test cluster starts");
        cluster.create_database("engine").expect("test database");
        let url = cluster.url("engine").unwrap();
        let store = Store::open(&url).await.unwrap();
        let run_id = Uuid::now_v7();
        let keys = vec!["release:a".to_string(), "release:b".to_string()];
        let conn = RunConn::acquire(
            &url,
            "release",
            &keys,
            run_id,
            EventSink::none(),
            CancellationToken::new(),
        )
        .await
        .unwrap();
        let rows = || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM locks WHERE run_id = $1")
                .bind(run_id)
                .fetch_one(store.pool())
                .await
                .unwrap()
        };
        assert_eq!(rows().await, 2, "the run records itself as the holder");
        let terminated: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(terminated, 2, "one session holds both keys");
        conn.release().await;
        assert_eq!(rows().await, 0, "no row names a run that no session holds");
        drop(store);
        let _ = cluster.stop(StopMode::Immediate);
        let _ = std::fs::remove_dir_all(&root);
    }
}
