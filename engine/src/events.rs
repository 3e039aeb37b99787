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

/// Where events go; a dropped receiver is fine.
#[derive(Debug, Clone, Default)]
pub struct EventSink(Option<UnboundedSender<Event>>);

impl EventSink {
    pub fn new(tx: UnboundedSender<Event>) -> Self {
        EventSink(Some(tx))
    }

    pub fn none() -> Self {
        EventSink(None)
    }

    pub fn emit(&self, event: Event) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(event);
        }
    }
}
