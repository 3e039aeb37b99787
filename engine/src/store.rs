//! The state database: runs, checkpoints, history, breaker transitions and lock holders.
//! Queries for the CLI go through a small pool; a running run writes through its own
//! `RunConn` (the run's own connection), which also holds the run's advisory locks.
//!
//! The engine migrates only its own tables ([`MIGRATOR`], `migrations/engine/`). Other crates
//! that keep tables in the same database ship their own migrators; the caller passes them to
//! [`Store::open_with`], which merges everything into one migrator (one `_sqlx_migrations`
//! table, one run, one status listing). Versions are unique across all owners.

use crate::error::EngineError;
use crate::plan::Plan;
use crate::state::{PhaseState, RunState};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use uuid::Uuid;

/// The engine's own migrations (`migrations/engine/`): runs, phases, attempts, compensations,
/// breaker events and locks.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations/engine");

/// One migrator holding the engine's migrations and those of `others`, sorted by version.
///
/// The same migration given twice (same version and checksum) counts once; two different
/// migrations with one version are refused ([`EngineError::MigrationConflict`]). Like any
/// migrator, the result refuses a database where a migration it does not hold was applied, so
/// pass every crate whose tables the database has.
pub fn migrator(others: &[&Migrator]) -> Result<Migrator, EngineError> {
    let mut all: Vec<sqlx::migrate::Migration> = Vec::new();
    for m in std::iter::once(&MIGRATOR).chain(others.iter().copied()) {
        for migration in m.iter() {
            match all.iter().find(|a| {
                a.version == migration.version && a.migration_type == migration.migration_type
            }) {
                Some(a) if a.checksum == migration.checksum => {}
                Some(a) => {
                    return Err(EngineError::MigrationConflict {
                        version: migration.version,
                        first: a.description.to_string(),
                        second: migration.description.to_string(),
                    });
                }
                None => all.push(migration.clone()),
            }
        }
    }
    Ok(Migrator::with_migrations(all))
}

/// Matches a held session advisory lock for `lock_key` in this database. A run's keys are all
/// held by one session (or by its ancestors' sessions, for a child run's inherited keys), so a
/// run whose keys are none of them held has no live process: it is orphaned ([`NONE_HELD`]).
const LOCK_HELD: &str = "EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
     AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended(lock_key, 0))";

/// For a `runs` row: true when none of its `lock_keys` is held.
const NONE_HELD_BEFORE: &str =
    "NOT EXISTS (SELECT 1 FROM unnest(lock_keys) AS held_key(lock_key) WHERE ";
const NONE_HELD_AFTER: &str = ")";

/// A run as listed by `dive runs list`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub id: Uuid,
    pub workflow: String,
    pub state: RunState,
    /// The first of `lock_keys` (what runs with one key show; kept for older readers).
    pub lock_key: String,
    /// All the run's lock keys, sorted.
    pub lock_keys: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Present (true) when the run is active in the database but no process holds its locks.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub orphaned: bool,
    pub error: Option<String>,
}

/// One attempt of a phase.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub state: PhaseState,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// The compensation of a phase.
#[derive(Debug, Clone, Serialize)]
pub struct CompensationRecord {
    pub state: PhaseState,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// A phase as `dive runs show` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseRecord {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub state: PhaseState,
    pub attempts: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub output: Option<Value>,
    pub history: Vec<AttemptRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compensation: Option<CompensationRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BreakerRecord {
    pub breaker: String,
    pub transition: String,
    pub at: DateTime<Utc>,
}

/// Everything stored about a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub id: Uuid,
    pub workflow: String,
    pub state: RunState,
    pub params: Value,
    /// The first of `lock_keys` (what runs with one key show; kept for older readers).
    pub lock_key: String,
    /// All the run's lock keys, sorted (including keys a child run held through its parent).
    pub lock_keys: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub orphaned: bool,
    pub phases: Vec<PhaseRecord>,
    pub breaker_events: Vec<BreakerRecord>,
    #[serde(skip)]
    pub plan: Plan,
    #[serde(skip)]
    pub no_rollback: bool,
}

/// A lock key and who holds it.
#[derive(Debug, Clone, Serialize)]
pub struct LockRecord {
    pub key: String,
    pub run_id: Uuid,
    pub pid: i32,
    pub host: String,
    pub acquired_at: DateTime<Utc>,
    /// Whether a live session still holds the advisory lock; a row that is not held is stale.
    pub held: bool,
    pub run_state: Option<RunState>,
}

/// A migration and whether it is applied.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

/// What `dive runs cancel` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The live process was asked to stop; it rolls back or stops as its flags say.
    Requested,
    /// No process was running it (orphaned): marked cancelled, resumable.
    MarkedCancelled,
}

/// `rows` grouped by their `phase_id` column, in order.
fn by_phase(rows: &[PgRow]) -> HashMap<&str, Vec<&PgRow>> {
    let mut map: HashMap<&str, Vec<&PgRow>> = HashMap::new();
    for r in rows {
        map.entry(r.get("phase_id")).or_default().push(r);
    }
    map
}

fn parse_state<T: FromStr<Err = String>>(run: Uuid, s: &str) -> Result<T, EngineError> {
    s.parse().map_err(|why| EngineError::Corrupt { run, why })
}

/// Connection options for `url`, with statement logging quietened (it would drown the progress view).
pub fn connect_options(url: &str) -> Result<PgConnectOptions, EngineError> {
    use sqlx::ConnectOptions;
    Ok(PgConnectOptions::from_str(url)?
        .log_statements(tracing::log::LevelFilter::Trace)
        .application_name("dive"))
}

/// The state database, for everything except a run's own writes.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    url: String,
    /// What [`Store::migrate`] runs and [`Store::migration_status`] lists.
    migrator: Arc<Migrator>,
}

impl Store {
    /// Connects without touching the schema; [`Store::migrate`] would apply the engine's
    /// migrations only.
    pub async fn connect(url: &str) -> Result<Store, EngineError> {
        Store::connect_with(url, &[]).await
    }

    /// Connects without touching the schema; [`Store::migrate`] would apply the engine's
    /// migrations and those of `others` ([`migrator`]).
    pub async fn connect_with(url: &str, others: &[&Migrator]) -> Result<Store, EngineError> {
        let migrator = Arc::new(migrator(others)?);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(connect_options(url)?)
            .await?;
        Ok(Store {
            pool,
            url: url.to_string(),
            migrator,
        })
    }

    /// Connects and brings the engine's tables up to date.
    pub async fn open(url: &str) -> Result<Store, EngineError> {
        Store::open_with(url, &[]).await
    }

    /// Connects and brings the engine's tables and those of `others` up to date, in one run of
    /// one merged migrator ([`migrator`]).
    pub async fn open_with(url: &str, others: &[&Migrator]) -> Result<Store, EngineError> {
        let store = Store::connect_with(url, others).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the pending migrations of the set the store was opened with.
    pub async fn migrate(&self) -> Result<(), EngineError> {
        self.migrator.run(&self.pool).await?;
        Ok(())
    }

    /// Every migration of the set the store was opened with, by version, and whether it is applied.
    pub async fn migration_status(&self) -> Result<Vec<MigrationStatus>, EngineError> {
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        Ok(self
            .migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
            .map(|m| MigrationStatus {
                version: m.version,
                description: m.description.to_string(),
                applied: applied.contains(&m.version),
            })
            .collect())
    }

    /// Runs, newest first.
    pub async fn list_runs(&self, limit: i64) -> Result<Vec<RunSummary>, EngineError> {
        let rows = sqlx::query(sql_run_list())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let id: Uuid = r.get("id");
                Ok(RunSummary {
                    id,
                    workflow: r.get("workflow"),
                    state: parse_state(id, r.get("state"))?,
                    lock_key: r.get("lock_key"),
                    lock_keys: r.get("lock_keys"),
                    started_at: r.get("started_at"),
                    finished_at: r.get("finished_at"),
                    orphaned: r.get("orphaned"),
                    error: r.get("error"),
                })
            })
            .collect()
    }

    /// A run with its phases (pending ones included, from the plan), history and breaker events.
    pub async fn load_run(&self, id: Uuid) -> Result<RunRecord, EngineError> {
        let run = sqlx::query(sql_run_one())
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(EngineError::RunNotFound(id))?;
        let plan: Plan =
            serde_json::from_value(run.get("plan")).map_err(|e| EngineError::Corrupt {
                run: id,
                why: format!("stored plan: {e}"),
            })?;
        let phase_rows = sqlx::query(
            "SELECT phase_id, state, attempt, started_at, finished_at, output, error \
             FROM phases WHERE run_id = $1",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let attempt_rows = sqlx::query(
            "SELECT phase_id, attempt, state, started_at, finished_at, error \
             FROM phase_attempts WHERE run_id = $1 ORDER BY phase_id, attempt",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let comp_rows = sqlx::query(
            "SELECT phase_id, state, started_at, finished_at, error FROM compensations WHERE run_id = $1",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let breaker_rows = sqlx::query(
            "SELECT breaker, transition, at FROM breaker_events WHERE run_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;

        // Rows by phase, in one pass each: a plan may have thousands of phases. Phase ids are
        // unique, so each phase takes its rows out.
        let (mut phase_at, mut attempts_at, mut comp_at) = (
            by_phase(&phase_rows),
            by_phase(&attempt_rows),
            by_phase(&comp_rows),
        );
        let mut phases = Vec::with_capacity(plan.phases.len());
        for p in &plan.phases {
            let row = phase_at
                .remove(p.id.as_str())
                .unwrap_or_default()
                .first()
                .copied();
            let history = attempts_at
                .remove(p.id.as_str())
                .unwrap_or_default()
                .into_iter()
                .map(|r| {
                    Ok(AttemptRecord {
                        attempt: r.get::<i32, _>("attempt") as u32,
                        state: parse_state(id, r.get("state"))?,
                        started_at: r.get("started_at"),
                        finished_at: r.get("finished_at"),
                        error: r.get("error"),
                    })
                })
                .collect::<Result<Vec<_>, EngineError>>()?;
            let compensation = comp_at
                .remove(p.id.as_str())
                .unwrap_or_default()
                .first()
                .map(|r| {
                    Ok::<_, EngineError>(CompensationRecord {
                        state: parse_state(id, r.get("state"))?,
                        started_at: r.get("started_at"),
                        finished_at: r.get("finished_at"),
                        error: r.get("error"),
                    })
                })
                .transpose()?;
            phases.push(match row {
                Some(r) => PhaseRecord {
                    id: p.id.clone(),
                    kind: p.kind.clone(),
                    state: parse_state(id, r.get("state"))?,
                    attempts: r.get::<i32, _>("attempt") as u32,
                    started_at: r.get("started_at"),
                    finished_at: r.get("finished_at"),
                    error: r.get("error"),
                    output: r.get("output"),
                    history,
                    compensation,
                },
                None => PhaseRecord {
                    id: p.id.clone(),
                    kind: p.kind.clone(),
                    state: PhaseState::Pending,
                    attempts: 0,
                    started_at: None,
                    finished_at: None,
                    error: None,
                    output: None,
                    history,
                    compensation,
                },
            });
        }
        Ok(RunRecord {
            id,
            workflow: run.get("workflow"),
            state: parse_state(id, run.get("state"))?,
            params: run.get("params"),
            lock_key: run.get("lock_key"),
            lock_keys: run.get("lock_keys"),
            started_at: run.get("started_at"),
            finished_at: run.get("finished_at"),
            error: run.get("error"),
            orphaned: run.get("orphaned"),
            no_rollback: run.get("no_rollback"),
            phases,
            breaker_events: breaker_rows
                .iter()
                .map(|r| BreakerRecord {
                    breaker: r.get("breaker"),
                    transition: r.get("transition"),
                    at: r.get("at"),
                })
                .collect(),
            plan,
        })
    }

    /// Asks the process running `id` to stop, or marks an orphaned run cancelled.
    pub async fn cancel(&self, id: Uuid) -> Result<CancelOutcome, EngineError> {
        let run = self.load_run(id).await?;
        if !run.state.is_active() {
            return Err(EngineError::NotResumable {
                run: id,
                state: run.state.to_string(),
                why: "only a running run can be cancelled".into(),
            });
        }
        if !run.orphaned {
            sqlx::query("UPDATE runs SET cancel_requested = true WHERE id = $1")
                .bind(id)
                .execute(&self.pool)
                .await?;
            return Ok(CancelOutcome::Requested);
        }
        // Orphaned: take its locks (all of them, in order) so no resume races us, then mark it.
        let mut conn = self.pool.acquire().await?;
        let mut taken = Vec::new();
        let mut all = true;
        for key in &run.lock_keys {
            let got: Result<bool, sqlx::Error> =
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(key)
                    .fetch_one(&mut *conn)
                    .await;
            match got {
                Ok(true) => taken.push(key),
                Ok(false) => {
                    all = false;
                    break;
                }
                Err(e) => {
                    // The pooled session must not keep what it took.
                    conn.close_on_drop();
                    return Err(e.into());
                }
            }
        }
        let result = if all {
            sqlx::query(
                "UPDATE runs SET state = 'cancelled', error = 'cancelled by operator', finished_at = now() WHERE id = $1",
            )
        } else {
            sqlx::query("UPDATE runs SET cancel_requested = true WHERE id = $1")
        }
        .bind(id)
        .execute(&mut *conn)
        .await;
        for key in taken.iter().rev() {
            if let Err(e) = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                .bind(key)
                .execute(&mut *conn)
                .await
            {
                conn.close_on_drop();
                return Err(e.into());
            }
        }
        result?;
        Ok(if all {
            CancelOutcome::MarkedCancelled
        } else {
            CancelOutcome::Requested
        })
    }

    /// Lock holders, with whether each lock is really held.
    pub async fn locks(&self) -> Result<Vec<LockRecord>, EngineError> {
        let rows = sqlx::query(sql_locks()).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let run_id: Uuid = r.get("run_id");
                Ok(LockRecord {
                    key: r.get("key"),
                    run_id,
                    pid: r.get("pid"),
                    host: r.get("host"),
                    acquired_at: r.get("acquired_at"),
                    held: r.get("held"),
                    run_state: r
                        .get::<Option<&str>, _>("run_state")
                        .map(|s| parse_state(run_id, s))
                        .transpose()?,
                })
            })
            .collect()
    }

    /// The newest child run that run `parent` started under `key`, with its state.
    pub async fn child_run(
        &self,
        parent: Uuid,
        key: &str,
    ) -> Result<Option<(Uuid, RunState)>, EngineError> {
        let row: Option<(Uuid, String)> = sqlx::query_as(
            "SELECT id, state FROM runs WHERE parent_run_id = $1 AND parent_key = $2 \
             ORDER BY started_at DESC, id DESC LIMIT 1",
        )
        .bind(parent)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(id, state)| Ok((id, parse_state(id, &state)?)))
            .transpose()
    }

    /// Removes lock rows whose advisory lock nobody holds; returns their keys.
    pub async fn clean_locks(&self) -> Result<Vec<String>, EngineError> {
        Ok(sqlx::query_scalar(sql_clean_locks())
            .fetch_all(&self.pool)
            .await?)
    }

    /// The floor a checkpoint cannot go below: `n` durable single-row upserts, each its own
    /// commit, on a connection of its own with the settings a run's connection uses, each after
    /// `idle` without a commit (zero: back to back; a wave of a parallel run starts after its
    /// phases' idle time, and a machine may flush slower after one). Returns each commit's
    /// duration. Writes one row of the `locks` table (a key no run uses) and removes it again.
    pub async fn commit_floor(
        &self,
        n: usize,
        idle: std::time::Duration,
    ) -> Result<Vec<std::time::Duration>, EngineError> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect_with(&connect_options(&self.url)?).await?;
        let key = format!("bench:floor:{}", Uuid::now_v7());
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            if !idle.is_zero() {
                tokio::time::sleep(idle).await;
            }
            let start = std::time::Instant::now();
            sqlx::query(
                "INSERT INTO locks (key, run_id, pid, host) VALUES ($1, $2, 0, 'bench') \
                 ON CONFLICT (key) DO UPDATE SET acquired_at = now()",
            )
            .bind(&key)
            .bind(Uuid::nil())
            .execute(&mut conn)
            .await?;
            times.push(start.elapsed());
        }
        sqlx::query("DELETE FROM locks WHERE key = $1")
            .bind(&key)
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(times)
    }

    /// The run at the root of `id`'s ancestry (itself, for a run no other run started): its id
    /// is the trace id of every run in the tree.
    pub async fn root_run(&self, id: Uuid) -> Result<Uuid, EngineError> {
        Ok(sqlx::query_scalar(
            "WITH RECURSIVE up AS (SELECT id, parent_run_id FROM runs WHERE id = $1 \
             UNION ALL SELECT r.id, r.parent_run_id FROM runs r JOIN up ON r.id = up.parent_run_id) \
             SELECT id FROM up WHERE parent_run_id IS NULL",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or(id))
    }

    /// Breakers open (or half-open) in runs going on: `(breaker, state, since, run)`.
    pub async fn open_breakers(
        &self,
    ) -> Result<Vec<(String, String, DateTime<Utc>, Uuid)>, EngineError> {
        Ok(sqlx::query_as(
            "SELECT breaker, transition, at, run_id FROM \
             (SELECT DISTINCT ON (e.breaker) e.breaker, e.transition, e.at, e.run_id \
              FROM breaker_events e JOIN runs r ON r.id = e.run_id \
              WHERE r.state IN ('running', 'rolling_back') AND e.transition <> 'rejected' \
              ORDER BY e.breaker, e.id DESC) latest \
             WHERE transition IN ('open', 'half_open') ORDER BY breaker",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The engine's own invariants that the schema cannot enforce, each broken one as a
    /// sentence: a succeeded run whose phases did not all succeed, a phase still running or
    /// compensating in a run that ended, a phase row that is not in the stored plan, and
    /// lock rows that no live session holds.
    pub async fn validate(&self) -> Result<Vec<String>, EngineError> {
        let mut problems: Vec<String> = sqlx::query_scalar(
            "SELECT format('run %s (%s) succeeded but its phase `%s` is %s', r.id, r.workflow, \
                           p.phase_id, p.state) \
             FROM runs r JOIN phases p ON p.run_id = r.id \
             WHERE r.state = 'succeeded' AND p.state NOT IN ('succeeded', 'skipped') \
             UNION ALL \
             SELECT format('run %s (%s) is %s but its phase `%s` is still %s', r.id, r.workflow, \
                           r.state, p.phase_id, p.state) \
             FROM runs r JOIN phases p ON p.run_id = r.id \
             WHERE r.state IN ('rolled_back', 'cancelled') \
               AND p.state IN ('running', 'compensating') \
             UNION ALL \
             SELECT format('run %s (%s) has a checkpoint row for `%s`, which its plan does not have', \
                           r.id, r.workflow, p.phase_id) \
             FROM runs r JOIN phases p ON p.run_id = r.id \
             WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(r.plan->'phases') e \
                               WHERE e->>'id' = p.phase_id)",
        )
        .fetch_all(&self.pool)
        .await?;
        for lock in self.locks().await? {
            if !lock.held {
                problems.push(format!(
                    "lock `{}` names run {} but no session holds it (`dive locks clean` forgets it)",
                    lock.key, lock.run_id
                ));
            }
        }
        Ok(problems)
    }

    /// The first of `keys` that a session holds now, with the run recorded as its holder: read
    /// from `pg_locks`, so asking takes no lock (a dry run must not refuse a real run).
    pub async fn held_lock(
        &self,
        keys: &[String],
    ) -> Result<Option<(String, Option<Uuid>)>, EngineError> {
        Ok(sqlx::query_as(sql_held_lock())
            .bind(keys)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Counts for `dive db status`.
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, EngineError> {
        let rows =
            sqlx::query("SELECT state, count(*) AS n FROM runs GROUP BY state ORDER BY state")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(|r| (r.get("state"), r.get("n"))).collect())
    }
}

// The queries that embed LOCK_HELD are assembled once; sqlx wants `&'static str`.
macro_rules! with_lock_held {
    ($name:ident, $before:literal, $after:literal) => {
        fn $name() -> &'static str {
            static Q: std::sync::LazyLock<String> =
                std::sync::LazyLock::new(|| format!("{}{}{}", $before, LOCK_HELD, $after));
            Q.as_str()
        }
    };
}
// ... and those that ask whether any of a run's keys is held.
macro_rules! with_none_held {
    ($name:ident, $before:literal, $after:literal) => {
        fn $name() -> &'static str {
            static Q: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
                format!(
                    "{}{}{}{}{}",
                    $before, NONE_HELD_BEFORE, LOCK_HELD, NONE_HELD_AFTER, $after
                )
            });
            Q.as_str()
        }
    };
}
with_none_held!(
    sql_run_list,
    "SELECT id, workflow, state, lock_key, lock_keys, started_at, finished_at, error, \
     (state IN ('running', 'rolling_back') AND ",
    ") AS orphaned FROM runs ORDER BY started_at DESC, id DESC LIMIT $1"
);
with_none_held!(
    sql_run_one,
    "SELECT id, workflow, state, params, plan, lock_key, lock_keys, started_at, finished_at, error, \
     no_rollback, (state IN ('running', 'rolling_back') AND ",
    ") AS orphaned FROM runs WHERE id = $1"
);
with_lock_held!(
    sql_locks,
    "SELECT k.key, k.run_id, k.pid, k.host, k.acquired_at, \
     (SELECT r.state FROM runs r WHERE r.id = k.run_id) AS run_state, ",
    " AS held FROM locks k, LATERAL (SELECT k.key AS lock_key) x ORDER BY k.key"
);
with_lock_held!(
    sql_held_lock,
    "SELECT x.lock_key, (SELECT k.run_id FROM locks k WHERE k.key = x.lock_key) \
     FROM unnest($1::text[]) AS x(lock_key) WHERE ",
    " ORDER BY 1 LIMIT 1"
);
with_lock_held!(
    sql_clean_locks,
    "DELETE FROM locks k USING (SELECT key AS lock_key FROM locks) x WHERE x.lock_key = k.key AND NOT ",
    " RETURNING k.key"
);

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::SqlSafeStr;
    use sqlx::migrate::{Migration, MigrationType};

    fn owner(migrations: &[(i64, &'static str, &'static str)]) -> Migrator {
        Migrator::with_migrations(
            migrations
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        (*description).into(),
                        MigrationType::Simple,
                        sql.into_sql_str(),
                        false,
                    )
                })
                .collect(),
        )
    }

    fn versions(m: &Migrator) -> Vec<i64> {
        m.iter().map(|m| m.version).collect()
    }

    #[test]
    fn alone_the_engine_has_its_own_migrations() {
        let engine: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        assert!(!engine.is_empty());
        assert_eq!(versions(&migrator(&[]).unwrap()), engine);
    }

    #[test]
    fn other_owners_merge_sorted_by_version() {
        let a = owner(&[
            (900_002, "a second", "SELECT 2"),
            (900_000, "a first", "SELECT 0"),
        ]);
        let b = owner(&[(900_001, "b", "SELECT 1")]);
        let merged = migrator(&[&a, &b]).unwrap();
        let all = versions(&merged);
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted);
        assert_eq!(all.len(), MIGRATOR.iter().count() + 3);
        assert!(all.ends_with(&[900_000, 900_001, 900_002]));
    }

    #[test]
    fn one_owner_given_twice_counts_once() {
        let a = owner(&[(900_000, "a", "SELECT 0")]);
        let merged = migrator(&[&a, &a, &MIGRATOR]).unwrap();
        assert_eq!(merged.iter().count(), MIGRATOR.iter().count() + 1);
    }

    #[test]
    fn two_migrations_with_one_version_are_refused() {
        let a = owner(&[(900_000, "owner a", "SELECT 0")]);
        let b = owner(&[(900_000, "owner b", "SELECT 1")]);
        let err = migrator(&[&a, &b]).expect_err("refused");
        assert!(
            matches!(
                err,
                EngineError::MigrationConflict {
                    version: 900_000,
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("owner a") && text.contains("owner b"),
            "{text}"
        );

        let engine_version = MIGRATOR.iter().next().unwrap().version;
        let c = owner(&[(engine_version, "not the engine's", "SELECT 1")]);
        assert!(matches!(
            migrator(&[&c]),
            Err(EngineError::MigrationConflict { .. })
        ));
    }
}
