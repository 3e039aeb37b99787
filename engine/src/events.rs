//! What the engine tells its caller while a run progresses (progress views, logs, tests).

use crate::state::RunState;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    RunStarted {
        run_id: Uuid,
        workflow: String,
        phases: Vec<String>,
        resumed: bool,
    },
    /// A phase that succeeded before a resume; its stored output is reused.
    PhaseReused {
        phase: String,
    },
    PhaseStarted {
        phase: String,
        attempt: u32,
    },
    /// What a running phase is doing or waiting for.
    PhaseNote {
        phase: String,
        message: String,
    },
    PhaseSucceeded {
        phase: String,
        attempt: u32,
        elapsed: Duration,
    },
    PhaseFailed {
        phase: String,
        attempt: u32,
        error: String,
        retry_in: Option<Duration>,
    },
    PhaseSkipped {
        phase: String,
    },
    Compensating {
        phase: String,
    },
    Compensated {
        phase: String,
        elapsed: Duration,
    },
    CompensationFailed {
        phase: String,
        error: String,
    },
    Breaker {
        key: String,
        transition: String,
    },
    DatabaseUnavailable {
        attempt: u32,
        error: String,
        retry_in: Duration,
    },
    DatabaseRestored,
    Cancelling,
    RunFinished {
        state: RunState,
        error: Option<String>,
    },
}

impl Event {
    /// The phase an event is about, if any.
    fn phase_mut(&mut self) -> Option<&mut String> {
        match self {
            Event::PhaseReused { phase }
            | Event::PhaseStarted { phase, .. }
            | Event::PhaseNote { phase, .. }
            | Event::PhaseSucceeded { phase, .. }
            | Event::PhaseFailed { phase, .. }
            | Event::PhaseSkipped { phase }
            | Event::Compensating { phase }
            | Event::Compensated { phase, .. }
            | Event::CompensationFailed { phase, .. } => Some(phase),
            _ => None,
        }
    }

    /// One log line for this event. Phase notes and errors are the texts the progress view
    /// shows, which never carry secret values.
    fn log(&self) {
        use tracing::{info, warn};
        match self {
            Event::RunStarted {
                phases, resumed, ..
            } => info!(phases = phases.len(), resumed, "run started"),
            Event::PhaseReused { phase } => info!(phase, "phase succeeded earlier, output reused"),
            Event::PhaseStarted { phase, attempt } => info!(phase, attempt, "phase started"),
            Event::PhaseNote { phase, message } => info!(phase, "{message}"),
            Event::PhaseSucceeded {
                phase,
                attempt,
                elapsed,
            } => info!(
                phase,
                attempt,
                elapsed_ms = elapsed.as_millis() as u64,
                "phase succeeded"
            ),
            Event::PhaseFailed {
                phase,
                attempt,
                error,
                retry_in,
            } => warn!(
                phase,
                attempt,
                error,
                retry_in_ms = retry_in.map(|d| d.as_millis() as u64),
                "phase failed"
            ),
            Event::PhaseSkipped { phase } => info!(phase, "phase skipped"),
            Event::Compensating { phase } => info!(phase, "compensating"),
            Event::Compensated { phase, elapsed } => {
                info!(
                    phase,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "compensated"
                )
            }
            Event::CompensationFailed { phase, error } => {
                warn!(phase, error, "compensation failed")
            }
            Event::Breaker { key, transition } => info!(breaker = key, transition, "breaker"),
            Event::DatabaseUnavailable {
                attempt,
                error,
                retry_in,
            } => warn!(
                attempt,
                error,
                retry_in_ms = retry_in.as_millis() as u64,
                "state database unavailable; checkpoint write waits"
            ),
            Event::DatabaseRestored => info!("state database reachable again"),
            Event::Cancelling => warn!("cancelling the run"),
            Event::RunFinished { state, error } => {
                info!(
                    state = state.as_str(),
                    error = error.as_deref(),
                    "run finished"
                )
            }
        }
    }
}

/// Where events go; a dropped receiver is fine. A scoped sink prefixes phase names (the
/// phases of a child run show up as `hub/keycloak`).
#[derive(Debug, Clone, Default)]
pub struct EventSink {
    tx: Option<UnboundedSender<Event>>,
    scope: Option<String>,
}

impl EventSink {
    pub fn new(tx: UnboundedSender<Event>) -> Self {
        EventSink {
            tx: Some(tx),
            scope: None,
        }
    }

    pub fn none() -> Self {
        EventSink::default()
    }

    /// The same sink, with `prefix/` before every phase name.
    pub fn scoped(&self, prefix: &str) -> Self {
        EventSink {
            tx: self.tx.clone(),
            scope: Some(match &self.scope {
                Some(outer) => format!("{outer}/{prefix}"),
                None => prefix.to_string(),
            }),
        }
    }

    /// Logs `event` (in the span of the run or phase that emits it, so the log line carries
    /// the run id, workflow, trace id, phase and attempt) and passes it to the progress view.
    pub fn emit(&self, mut event: Event) {
        event.log();
        let Some(tx) = &self.tx else {
            return;
        };
        if let (Some(scope), Some(phase)) = (&self.scope, event.phase_mut()) {
            *phase = format!("{scope}/{phase}");
        }
        let _ = tx.send(event);
    }
}
