//! The phase trait every phase type implements, and the contract it must keep.
//!
//! # Idempotency and compensation contract
//! - `run` may be called again for a phase that already did its work (a crash between the side
//!   effect and the checkpoint, a retry after a timeout, `dive resume` of a phase found `running`).
//!   It must therefore *ensure* rather than *create*: "already there and as wanted" is success
//!   (HTTP 409 from an API means done, not failed).
//! - `compensate` undoes what `run` did and is idempotent too: it is called for a phase that
//!   succeeded, may be called again after a crash during rollback, and must tolerate that the
//!   thing it removes is already gone.
//! - Every `.await` is a cancellation point: a cancelled run drops the future. Leave nothing that a
//!   second `run` or a `compensate` could not finish.
//! - Errors say whether a retry can help ([`PhaseError::Retryable`]) or not ([`PhaseError::Fatal`]:
//!   bad credentials, invalid configuration). Error text never contains a secret value.

use crate::events::{Event, EventSink};
use crate::services::Services;
use async_trait::async_trait;
use serde_json::Value;
use std::fmt;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What a phase gets to do its work.
#[derive(Clone)]
pub struct PhaseContext {
    pub run_id: Uuid,
    pub phase_id: String,
    /// 1 for the first attempt of this phase in this run; keeps counting across resumes.
    pub attempt: u32,
    /// Cancelled when the run is cancelled; long phases may watch it to stop early.
    pub cancel: CancellationToken,
    /// Shared resources (runtimes, clients) that phase types registered with the engine.
    pub services: Arc<Services>,
    /// Where [`PhaseContext::note`] goes.
    pub events: EventSink,
    /// Every lock key the run runs under (sorted): its own and those its ancestor runs hold. A
    /// child run started by this phase gets them as [`crate::RunOptions::held_lock_keys`].
    pub held_lock_keys: Vec<String>,
}

impl PhaseContext {
    /// Tells the operator what a long phase is waiting for (shown in the progress view).
    pub fn note(&self, message: impl Into<String>) {
        self.events.emit(Event::PhaseNote {
            phase: self.phase_id.clone(),
            message: message.into(),
        });
    }
}

impl fmt::Debug for PhaseContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhaseContext")
            .field("run_id", &self.run_id)
            .field("phase_id", &self.phase_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Why a phase attempt failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhaseError {
    /// A transient failure (network, timeout, service starting): the retry policy applies.
    #[error("{0}")]
    Retryable(String),
    /// A failure a retry cannot fix: the phase fails at once.
    #[error("{0}")]
    Fatal(String),
}

impl PhaseError {
    pub fn retryable(msg: impl Into<String>) -> Self {
        PhaseError::Retryable(msg.into())
    }

    pub fn fatal(msg: impl Into<String>) -> Self {
        PhaseError::Fatal(msg.into())
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, PhaseError::Retryable(_))
    }
}

/// A typed workflow phase. Implementations are registered with `#[typetag::serde(name = "...")]`
/// and declared with `#[serde(deny_unknown_fields)]`, so a misspelt field is a validation error.
#[typetag::serde(tag = "type")]
#[async_trait]
pub trait Phase: Send + Sync + fmt::Debug {
    /// Does the work and returns the phase's output (a JSON object; never secret values).
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError>;

    /// Whether [`Phase::compensate`] does anything; phases without one are left alone by rollback.
    fn has_compensation(&self) -> bool {
        false
    }

    /// Undoes `run`, given the output it produced.
    async fn compensate(&self, _ctx: &PhaseContext, _output: &Value) -> Result<(), PhaseError> {
        Ok(())
    }

    /// Checks, before a new run starts, what can be known without changing anything (a
    /// required instance exists, say). A failure stops the run before anything is written and
    /// is reported as invalid input. Phases whose fields use other phases' outputs are skipped.
    async fn precheck(&self, _ctx: &PhaseContext) -> Result<(), String> {
        Ok(())
    }

    /// Breaker group a phase type chooses for itself (e.g. `keycloak:FRA`); the workflow's
    /// `breaker:` field takes precedence.
    fn breaker_key(&self) -> Option<String> {
        None
    }
}
