//! Phase histograms, read once for what can no longer change.
//!
//! A run that succeeded, rolled back or was cancelled never runs again, so its phases' rows are
//! final. The exporter folds the phases of runs that ended that way more than [`SETTLE`] ago into
//! a running total once, and each scrape reads only the rest (runs going on, failed ones that may
//! be resumed, and the last minute's): a scrape's cost follows what is live, not the history.

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;
use std::collections::BTreeMap;

/// How long after it ended a run's rows are taken as final (commits land well within it).
const SETTLE: Duration = Duration::seconds(60);

/// Per (phase type, bucket index): finished attempts, their summed seconds, retries.
pub(crate) type PhaseTotals = BTreeMap<(String, i32), (i64, f64, i64)>;

/// The phases of runs that ended for good before `upto`, summed.
#[derive(Debug, Default)]
pub struct Settled {
    upto: Option<DateTime<Utc>>,
    totals: PhaseTotals,
}

const FINAL: &str = "('succeeded', 'rolled_back', 'cancelled')";

/// Phase rows of the runs `filter` selects (over `p` and `r`), grouped by type and bucket.
fn phase_query(filter: &str) -> String {
    format!(
        "SELECT coalesce(p.phase_type, 'unknown'), \
                coalesce(width_bucket(date_part('epoch', p.finished_at - p.started_at), $1), 0), \
                count(*) FILTER (WHERE p.finished_at IS NOT NULL AND p.started_at IS NOT NULL), \
                coalesce(sum(date_part('epoch', p.finished_at - p.started_at)), 0), \
                coalesce(sum(p.attempt - 1) FILTER (WHERE p.attempt > 1), 0) \
         FROM phases p JOIN runs r ON r.id = p.run_id \
         WHERE p.attempt > 0 AND {filter} GROUP BY 1, 2"
    )
}

fn add(totals: &mut PhaseTotals, rows: Vec<(String, i32, i64, f64, i64)>) {
    for (t, b, count, sum, retries) in rows {
        let e = totals.entry((t, b)).or_default();
        e.0 += count;
        e.1 += sum;
        e.2 += retries;
    }
}

impl Settled {
    /// Every phase's totals at `now`: the settled ones (brought up to `now - SETTLE` first)
    /// plus the rest, read now.
    pub(crate) async fn phases(
        &mut self,
        pool: &PgPool,
        now: DateTime<Utc>,
        bounds: &[f64],
    ) -> Result<PhaseTotals, sqlx::Error> {
        let upto = now - SETTLE;
        let newly: Vec<(String, i32, i64, f64, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(phase_query(&format!(
                "r.state IN {FINAL} AND ($2::timestamptz IS NULL OR r.finished_at >= $2) \
                 AND r.finished_at < $3"
            ))))
            .bind(bounds)
            .bind(self.upto)
            .bind(upto)
            .fetch_all(pool)
            .await?;
        add(&mut self.totals, newly);
        self.upto = Some(upto);
        let live: Vec<(String, i32, i64, f64, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(phase_query(&format!(
                "NOT (r.state IN {FINAL} AND r.finished_at IS NOT NULL AND r.finished_at < $2)"
            ))))
            .bind(bounds)
            .bind(upto)
            .fetch_all(pool)
            .await?;
        let mut totals = self.totals.clone();
        add(&mut totals, live);
        Ok(totals)
    }
}
