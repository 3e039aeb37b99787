//! What one scrape reads from the state database, as plain rows.

use crate::settled::Settled;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Upper bounds of the run and phase duration histograms (seconds).
pub(crate) const DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
];
/// Upper bounds of the verification latency histogram (seconds).
pub(crate) const LATENCY_BUCKETS: [f64; 8] = [0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// One instance service's last health check, as the caller measured it.
#[derive(Debug, Clone)]
pub struct ServiceUp {
    /// The instance's code (the label is `code`: Prometheus names its scrape targets `instance`).
    pub code: String,
    pub service: String,
    /// Running and healthy.
    pub up: bool,
}

/// Non-cumulative bucket counts (one per upper bound, then +Inf), their sum and count.
#[derive(Debug, Clone, Default)]
pub(crate) struct Buckets {
    pub counts: Vec<u64>,
    pub sum: f64,
}

/// Everything one scrape shows.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// (workflow, run state, runs)
    pub(crate) runs: Vec<(String, String, i64)>,
    /// (workflow, durations of finished runs)
    pub(crate) run_durations: Vec<(String, Buckets)>,
    /// (phase type, durations of finished attempts, retries)
    pub(crate) phase_durations: Vec<(String, Buckets, i64)>,
    /// (breaker, its state: the latest transition in a run still going on, else closed), for
    /// every breaker ever recorded.
    pub(crate) breakers: Vec<(String, String)>,
    /// (breaker, transition, count)
    pub(crate) breaker_transitions: Vec<(String, String, i64)>,
    pub(crate) locks_held: i64,
    /// (workflow, refusals)
    pub(crate) lock_refusals: Vec<(String, i64)>,
    pub(crate) directions: Vec<Direction>,
    /// (source, target, user outcome ok, logins)
    pub(crate) user_logins: Vec<(String, String, bool, i64)>,
    /// (secret name, seconds since its latest version)
    pub(crate) secret_ages: Vec<(String, f64)>,
    pub(crate) services: Vec<ServiceUp>,
}

/// One verified direction (users of `source` logging in at `target`).
#[derive(Debug)]
pub(crate) struct Direction {
    pub source: String,
    pub target: String,
    pub last_ok: bool,
    pub ok_total: i64,
    pub failed_total: i64,
    pub last_success: Option<DateTime<Utc>>,
    pub seconds_since_success: Option<f64>,
    pub latency: Buckets,
}

#[derive(sqlx::FromRow)]
struct DirectionRow {
    source: String,
    target: String,
    last_ok: bool,
    ok_total: i64,
    failed_total: i64,
    last_success: Option<DateTime<Utc>>,
}

/// Rows `(label, bucket index, count, sum)` as `width_bucket` groups them, into histograms.
fn histograms(rows: Vec<(String, i32, i64, f64)>, bounds: usize) -> Vec<(String, Buckets)> {
    let mut out: Vec<(String, Buckets)> = Vec::new();
    for (label, bucket, count, sum) in rows {
        if out.last().is_none_or(|(l, _)| *l != label) {
            let counts = vec![0; bounds + 1];
            out.push((label.clone(), Buckets { counts, sum: 0.0 }));
        }
        let b = &mut out.last_mut().expect("pushed above").1;
        // width_bucket: 0 below the first bound, i for bounds[i-1] <= x < bounds[i].
        b.counts[(bucket as usize).min(bounds)] += count as u64;
        b.sum += sum;
    }
    out
}

impl Snapshot {
    /// Reads the state database at `now`.
    pub async fn read(
        pool: &PgPool,
        now: DateTime<Utc>,
        services: &[ServiceUp],
        settled: &mut Settled,
    ) -> Result<Snapshot, sqlx::Error> {
        // Side by side, each on a connection of the pool: a scrape costs its slowest query.
        let runs = sqlx::query_as(
            "SELECT workflow, state, count(*) FROM runs GROUP BY workflow, state ORDER BY 1, 2",
        )
        .fetch_all(pool);
        let run_rows = sqlx::query_as(
            "SELECT workflow, width_bucket(d, $1), count(*), sum(d) FROM \
             (SELECT workflow, date_part('epoch', finished_at - started_at) AS d \
              FROM runs WHERE finished_at IS NOT NULL) r GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(&DURATION_BUCKETS[..])
        .fetch_all(pool);
        let phase_totals = settled.phases(pool, now, &DURATION_BUCKETS);
        let breakers = sqlx::query_as(
            "SELECT k.breaker, coalesce(a.transition, 'closed') FROM \
             (SELECT DISTINCT breaker FROM breaker_events) k LEFT JOIN \
             (SELECT DISTINCT ON (e.breaker) e.breaker, e.transition FROM breaker_events e \
              JOIN runs r ON r.id = e.run_id AND r.state IN ('running', 'rolling_back') \
              WHERE e.transition <> 'rejected' ORDER BY e.breaker, e.id DESC) a USING (breaker) \
             ORDER BY 1",
        )
        .fetch_all(pool);
        let breaker_transitions = sqlx::query_as(
            "SELECT breaker, transition, count(*) FROM breaker_events GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(pool);
        let locks_held = sqlx::query_scalar("SELECT count(*) FROM locks").fetch_one(pool);
        let lock_refusals =
            sqlx::query_as("SELECT workflow, count(*) FROM lock_refusals GROUP BY 1 ORDER BY 1")
                .fetch_all(pool);
        let user_logins = sqlx::query_as(
            "SELECT v.source, v.target, coalesce((u->>'ok')::boolean, false), count(*) \
             FROM federation_verifications v, jsonb_array_elements(v.users) u \
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .fetch_all(pool);
        let secret_ages = sqlx::query_as(
            "SELECT name, date_part('epoch', $1 - max(created_at)) FROM secrets \
             GROUP BY name ORDER BY name",
        )
        .bind(now)
        .fetch_all(pool);
        let (
            runs,
            run_rows,
            phase_totals,
            breakers,
            breaker_transitions,
            locks_held,
            lock_refusals,
            directions,
            user_logins,
            secret_ages,
        ) = futures::try_join!(
            runs,
            run_rows,
            phase_totals,
            breakers,
            breaker_transitions,
            locks_held,
            lock_refusals,
            Self::directions(pool, now),
            user_logins,
            secret_ages,
        )?;
        let mut retries: Vec<(String, i64)> = Vec::new();
        for ((t, _), (_, _, r)) in &phase_totals {
            match retries.last_mut() {
                Some((last, n)) if last == t => *n += r,
                _ => retries.push((t.clone(), *r)),
            }
        }
        let rows = phase_totals
            .into_iter()
            .map(|((t, b), (count, sum, _))| (t, b, count, sum))
            .collect();
        let phase_durations = histograms(rows, DURATION_BUCKETS.len())
            .into_iter()
            .zip(retries)
            .map(|((t, b), (_, r))| (t, b, r))
            .collect();
        Ok(Snapshot {
            runs,
            run_durations: histograms(run_rows, DURATION_BUCKETS.len()),
            phase_durations,
            breakers,
            breaker_transitions,
            locks_held,
            lock_refusals,
            directions,
            user_logins,
            secret_ages,
            services: services.to_vec(),
        })
    }

    async fn directions(pool: &PgPool, now: DateTime<Utc>) -> Result<Vec<Direction>, sqlx::Error> {
        let rows: Vec<DirectionRow> = sqlx::query_as(
            "SELECT source, target, \
                    (array_agg(ok ORDER BY verified_at DESC, id DESC))[1] AS last_ok, \
                    count(*) FILTER (WHERE ok) AS ok_total, \
                    count(*) FILTER (WHERE NOT ok) AS failed_total, \
                    max(verified_at) FILTER (WHERE ok) AS last_success \
             FROM federation_verifications GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .fetch_all(pool)
        .await?;
        let mut latency = histograms(
            sqlx::query_as(
                "SELECT source || ' ' || target, width_bucket(latency_ms / 1000.0::float8, $1), \
                        count(*), sum(latency_ms / 1000.0::float8) \
                 FROM federation_verifications WHERE ok GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .bind(&LATENCY_BUCKETS[..])
            .fetch_all(pool)
            .await?,
            LATENCY_BUCKETS.len(),
        );
        Ok(rows
            .into_iter()
            .map(
                |DirectionRow {
                     source,
                     target,
                     last_ok,
                     ok_total,
                     failed_total,
                     last_success,
                 }| {
                    let key = format!("{source} {target}");
                    let latency = latency
                        .iter()
                        .position(|(k, _)| *k == key)
                        .map(|i| latency.swap_remove(i).1)
                        .unwrap_or_else(|| Buckets {
                            counts: vec![0; LATENCY_BUCKETS.len() + 1],
                            sum: 0.0,
                        });
                    Direction {
                        seconds_since_success: last_success
                            .map(|t| (now - t).num_milliseconds() as f64 / 1000.0),
                        source,
                        target,
                        last_ok,
                        ok_total,
                        failed_total,
                        last_success,
                        latency,
                    }
                },
            )
            .collect())
    }
}
