//! The snapshot in the OpenMetrics text format (prometheus-client's encoder).

use crate::snapshot::{Buckets, DURATION_BUCKETS, Direction, LATENCY_BUCKETS, Snapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// A run's terminal states: what `dive_runs_finished_total{outcome}` counts.
const FINISHED: [&str; 5] = [
    "succeeded",
    "failed",
    "rolled_back",
    "rollback_failed",
    "cancelled",
];
/// The workflows whose runs are rotations.
const ROTATIONS: [&str; 2] = ["secret-rotation", "secret-rotation-all"];

/// One metric family: a descriptor, then one sample set per label set.
fn family<'s>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Labels<'s>, Sample<'s>)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, sample) in samples {
        let enc = metric.encode_family(&labels)?;
        match sample {
            Sample::Counter(v) => ConstCounter::new(v).encode(enc)?,
            Sample::Gauge(v) => ConstGauge::new(v).encode(enc)?,
            Sample::Histogram(b, bounds) => histogram(enc, b, bounds)?,
        }
    }
    Ok(())
}

enum Sample<'a> {
    Counter(u64),
    Gauge(f64),
    Histogram(&'a Buckets, &'static [f64]),
}

fn histogram(
    mut enc: prometheus_client::encoding::MetricEncoder,
    b: &Buckets,
    bounds: &[f64],
) -> Result<(), std::fmt::Error> {
    let buckets: Vec<(f64, u64)> = bounds
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .zip(b.counts.iter().copied())
        .collect();
    let count = b.counts.iter().sum();
    enc.encode_histogram::<prometheus_client::encoding::NoLabelSet>(b.sum, count, &buckets, None)
}

impl Snapshot {
    /// Runs of the workflows `workflow` accepts that are in one of `states`.
    fn runs_in(&self, workflow: impl Fn(&str) -> bool, states: &[&str]) -> u64 {
        self.runs
            .iter()
            .filter(|(w, s, _)| workflow(w) && states.contains(&s.as_str()))
            .map(|(_, _, n)| *n as u64)
            .sum()
    }
}

fn dir(d: &Direction) -> Labels<'_> {
    vec![("source", d.source.as_str()), ("target", d.target.as_str())]
}

impl Snapshot {
    /// The OpenMetrics text of this snapshot.
    pub fn encode(self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge, Histogram};
        let mut started: Vec<(&str, u64)> = Vec::new();
        for (w, _, n) in &self.runs {
            match started.last_mut() {
                Some((last, total)) if last == w => *total += *n as u64,
                _ => started.push((w, *n as u64)),
            }
        }
        family(
            &mut e,
            "dive_runs_started",
            "Runs recorded, by workflow.",
            Counter,
            started
                .iter()
                .map(|(w, n)| (vec![("workflow", *w)], Sample::Counter(*n))),
        )?;
        family(
            &mut e,
            "dive_runs_finished",
            "Runs that ended, by workflow and outcome.",
            Counter,
            self.runs
                .iter()
                .filter(|(_, s, _)| FINISHED.contains(&s.as_str()))
                .map(|(w, s, n)| {
                    (
                        vec![("workflow", w.as_str()), ("outcome", s.as_str())],
                        Sample::Counter(*n as u64),
                    )
                }),
        )?;
        family(
            &mut e,
            "dive_runs_active",
            "Runs going on (running or rolling back), by workflow.",
            Gauge,
            started.iter().map(|(w, _)| {
                let n = self.runs_in(|rw| rw == *w, &["running", "rolling_back"]);
                (vec![("workflow", *w)], Sample::Gauge(n as f64))
            }),
        )?;
        family(
            &mut e,
            "dive_rollbacks",
            "Runs rolled back (or whose rollback failed), by workflow.",
            Counter,
            started.iter().map(|(w, _)| {
                let n = self.runs_in(|rw| rw == *w, &["rolled_back", "rollback_failed"]);
                (vec![("workflow", *w)], Sample::Counter(n))
            }),
        )?;
        family(
            &mut e,
            "dive_run_duration_seconds",
            "Duration of finished runs, by workflow.",
            Histogram,
            self.run_durations.iter().map(|(w, b)| {
                (
                    vec![("workflow", w.as_str())],
                    Sample::Histogram(b, &DURATION_BUCKETS),
                )
            }),
        )?;
        family(
            &mut e,
            "dive_phase_duration_seconds",
            "Duration of finished phase attempts, by phase type.",
            Histogram,
            self.phase_durations.iter().map(|(t, b, _)| {
                (
                    vec![("type", t.as_str())],
                    Sample::Histogram(b, &DURATION_BUCKETS),
                )
            }),
        )?;
        family(
            &mut e,
            "dive_phase_retries",
            "Attempts after a phase's first, by phase type.",
            Counter,
            self.phase_durations
                .iter()
                .map(|(t, _, r)| (vec![("type", t.as_str())], Sample::Counter(*r as u64))),
        )?;
        family(
            &mut e,
            "dive_breaker_open",
            "1 while a circuit breaker is open in a run going on, 0.5 half-open, else 0 (every breaker ever recorded).",
            Gauge,
            self.breakers.iter().map(|(k, t)| {
                let v = match t.as_str() {
                    "open" => 1.0,
                    "half_open" => 0.5,
                    _ => 0.0,
                };
                (vec![("breaker", k.as_str())], Sample::Gauge(v))
            }),
        )?;
        family(
            &mut e,
            "dive_breaker_transitions",
            "Circuit breaker transitions (and calls rejected while open).",
            Counter,
            self.breaker_transitions.iter().map(|(k, t, n)| {
                (
                    vec![("breaker", k.as_str()), ("transition", t.as_str())],
                    Sample::Counter(*n as u64),
                )
            }),
        )?;
        family(
            &mut e,
            "dive_locks_held",
            "Run lock keys held now.",
            Gauge,
            [(vec![], Sample::Gauge(self.locks_held as f64))],
        )?;
        family(
            &mut e,
            "dive_lock_refusals",
            "Runs refused because another run held a lock, by workflow (dive never waits for a lock).",
            Counter,
            self.lock_refusals
                .iter()
                .map(|(w, n)| (vec![("workflow", w.as_str())], Sample::Counter(*n as u64))),
        )?;
        family(
            &mut e,
            "dive_federation_verification_ok",
            "1 if the latest verification of a direction (users of source logging in at target) passed.",
            Gauge,
            self.directions
                .iter()
                .map(|d| (dir(d), Sample::Gauge(if d.last_ok { 1.0 } else { 0.0 }))),
        )?;
        family(
            &mut e,
            "dive_federation_verifications",
            "Verifications of a direction, by outcome.",
            Counter,
            self.directions.iter().flat_map(|d| {
                [
                    (
                        {
                            let mut l = dir(d);
                            l.push(("outcome", "ok"));
                            l
                        },
                        Sample::Counter(d.ok_total as u64),
                    ),
                    (
                        {
                            let mut l = dir(d);
                            l.push(("outcome", "failed"));
                            l
                        },
                        Sample::Counter(d.failed_total as u64),
                    ),
                ]
            }),
        )?;
        family(
            &mut e,
            "dive_federation_verification_latency_seconds",
            "Duration of passing verifications of a direction.",
            Histogram,
            self.directions
                .iter()
                .map(|d| (dir(d), Sample::Histogram(&d.latency, &LATENCY_BUCKETS))),
        )?;
        family(
            &mut e,
            "dive_federation_last_success_timestamp_seconds",
            "When a direction last verified good (Unix time).",
            Gauge,
            self.directions.iter().filter_map(|d| {
                d.last_success
                    .map(|t| (dir(d), Sample::Gauge(t.timestamp_millis() as f64 / 1000.0)))
            }),
        )?;
        family(
            &mut e,
            "dive_federation_seconds_since_success",
            "Seconds since a direction last verified good.",
            Gauge,
            self.directions
                .iter()
                .filter_map(|d| d.seconds_since_success.map(|s| (dir(d), Sample::Gauge(s)))),
        )?;
        family(
            &mut e,
            "dive_federation_user_logins",
            "Test-user logins of verifications, by direction and outcome.",
            Counter,
            self.user_logins.iter().map(|(s, t, ok, n)| {
                let outcome = if *ok { "ok" } else { "failed" };
                (
                    vec![
                        ("source", s.as_str()),
                        ("target", t.as_str()),
                        ("outcome", outcome),
                    ],
                    Sample::Counter(*n as u64),
                )
            }),
        )?;
        family(
            &mut e,
            "dive_secret_age_seconds",
            "Seconds since a secret's latest version was written.",
            Gauge,
            self.secret_ages
                .iter()
                .map(|(n, a)| (vec![("secret", n.as_str())], Sample::Gauge(*a))),
        )?;
        family(
            &mut e,
            "dive_secret_rotations",
            "Secret rotation runs that ended, by outcome.",
            Counter,
            FINISHED.iter().map(|outcome| {
                let n = self.runs_in(|w| ROTATIONS.contains(&w), &[*outcome]);
                (vec![("outcome", *outcome)], Sample::Counter(n))
            }),
        )?;
        family(
            &mut e,
            "dive_instance_service_up",
            "1 if an instance's service is running and healthy (as of dive serve's last check).",
            Gauge,
            self.services.iter().map(|s| {
                (
                    vec![("code", s.code.as_str()), ("service", s.service.as_str())],
                    Sample::Gauge(if s.up { 1.0 } else { 0.0 }),
                )
            }),
        )?;
        Ok(())
    }
}
