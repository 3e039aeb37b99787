//! Circuit breakers (failsafe), one per dependency key within a run. After repeated retryable
//! failures a breaker opens and calls fail fast with "circuit open for KEY"; after a cool-down it
//! lets one call through (half-open). Every transition is reported so the run can record it.

use crate::phase::PhaseError;
use chrono::{DateTime, Utc};
use failsafe::failure_policy::{ConsecutiveFailures, consecutive_failures};
use failsafe::futures::CircuitBreaker;
use failsafe::{Config, FailurePredicate, Instrument, StateMachine, backoff};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// A recorded breaker transition: key, transition name, time.
pub type Transition = (String, String, DateTime<Utc>);

/// When breakers open and how long they stay open.
#[derive(Debug, Clone, Copy)]
pub struct BreakerPolicy {
    pub failures: u32,
    /// Constant cool-down: failsafe's exponential back-offs panic below one second.
    pub cooldown: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            failures: 3,
            cooldown: Duration::from_secs(2),
        }
    }
}

#[derive(Clone)]
struct Recorder {
    key: String,
    tx: UnboundedSender<Transition>,
    /// Whether the breaker has left `closed`: failsafe also calls `on_closed` when a breaker is
    /// created, which is not a transition and must not be recorded.
    tripped: Arc<AtomicBool>,
}

impl Recorder {
    fn send(&self, what: &str) {
        let _ = self
            .tx
            .send((self.key.clone(), what.to_string(), Utc::now()));
    }
}

impl Instrument for Recorder {
    fn on_call_rejected(&self) {
        self.send("rejected");
    }
    fn on_open(&self) {
        self.tripped.store(true, Ordering::Relaxed);
        self.send("open");
    }
    fn on_half_open(&self) {
        self.tripped.store(true, Ordering::Relaxed);
        self.send("half_open");
    }
    fn on_closed(&self) {
        if self.tripped.swap(false, Ordering::Relaxed) {
            self.send("closed");
        }
    }
}

/// Only failures a retry could fix count against a breaker; a fatal error, or the state
/// database being unavailable, says nothing about the dependency's health.
#[derive(Clone, Copy)]
struct RetryableOnly;

impl FailurePredicate<PhaseError> for RetryableOnly {
    fn is_err(&self, err: &PhaseError) -> bool {
        err.is_retryable() && !err.is_state_db_unavailable()
    }
}

type Machine = StateMachine<ConsecutiveFailures<backoff::Constant>, Recorder>;

/// The breakers of one run.
pub struct Breakers {
    policy: BreakerPolicy,
    tx: UnboundedSender<Transition>,
    machines: Mutex<HashMap<String, Machine>>,
}

impl Breakers {
    pub fn new(policy: BreakerPolicy, tx: UnboundedSender<Transition>) -> Self {
        Breakers {
            policy,
            tx,
            machines: Mutex::new(HashMap::new()),
        }
    }

    fn machine(&self, key: &str) -> Machine {
        let mut machines = self.machines.lock().expect("breaker map poisoned");
        machines
            .entry(key.to_string())
            .or_insert_with(|| {
                Config::new()
                    .failure_policy(consecutive_failures(
                        self.policy.failures,
                        backoff::constant(self.policy.cooldown),
                    ))
                    .instrument(Recorder {
                        key: key.to_string(),
                        tx: self.tx.clone(),
                        tripped: Arc::new(AtomicBool::new(false)),
                    })
                    .build()
            })
            .clone()
    }

    /// Runs `call` through the breaker for `key`.
    pub fn guard<F>(
        &self,
        key: &str,
        call: F,
    ) -> impl Future<Output = Result<serde_json::Value, PhaseError>> + use<F>
    where
        F: Future<Output = Result<serde_json::Value, PhaseError>>,
    {
        let machine = self.machine(key);
        let key = key.to_string();
        async move {
            machine
                .call_with(RetryableOnly, call)
                .await
                .map_err(|e| match e {
                    failsafe::Error::Inner(e) => e,
                    failsafe::Error::Rejected => {
                        PhaseError::retryable(format!("circuit open for {key}"))
                    }
                })
        }
    }
}
