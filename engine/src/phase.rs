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
//! - Errors say whether a retry can help ([`PhaseError::retryable`]) or not ([`PhaseError::fatal`]:
//!   bad credentials, invalid configuration); domain errors say it through [`Classify`] and
//!   convert with `?`. Error text never contains a secret value.

use crate::dry_run::{Action, Change, PhasePlan};
use crate::events::{Event, EventSink};
use crate::store::Store;
use crate::subflow::WorkflowCatalog;
use async_trait::async_trait;
pub use dive_error::Classify;
use serde_json::Value;
use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
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
    /// The state database (child runs are recorded there too).
    pub store: Store,
    /// Where `workflow` phases find child workflows by name.
    pub catalog: Arc<dyn WorkflowCatalog>,
    /// What the phase types of other crates work with (a secret store, a runtime, …), built
    /// once at start-up by the caller and opaque to the engine; read it with
    /// [`PhaseContext::services`].
    pub services: Arc<dyn Any + Send + Sync>,
    /// What lock keys stand for (a child run's keys are expanded with it too).
    pub lock_expander: Arc<dyn crate::LockExpander>,
    /// Where [`PhaseContext::note`] goes.
    pub events: EventSink,
    /// Every lock key the run runs under (sorted): its own and those its ancestor runs hold. A
    /// child run started by this phase gets them as [`crate::RunOptions::held_lock_keys`].
    pub held_lock_keys: Vec<String>,
    /// In a dry run ([`Phase::plan`]): the planned outputs of the phases planned before this
    /// one, by phase id, for a phase whose work depends on what an earlier one would decide
    /// (which secrets a rotation mints, say). Empty in a run, where phases read the live state.
    pub planned_outputs: Arc<HashMap<String, Value>>,
}

/// The `planned_outputs` of a run's phases: none, shared (a phase starts without allocating it).
pub(crate) fn no_planned_outputs() -> Arc<HashMap<String, Value>> {
    static NONE: std::sync::LazyLock<Arc<HashMap<String, Value>>> =
        std::sync::LazyLock::new(Arc::default);
    NONE.clone()
}

impl PhaseContext {
    /// The services the engine was given ([`crate::Engine::with_services`]), as the type the
    /// caller built them as. A phase crate keeps one such type with typed accessors; this fails
    /// only when an engine was built without it, which is a bug of that caller.
    pub fn services<T: Any + Send + Sync>(&self) -> Result<&T, PhaseError> {
        self.services.downcast_ref::<T>().ok_or_else(|| {
            PhaseError::fatal(format!(
                "phase `{}` needs the services `{}`, and this engine was built without them",
                self.phase_id,
                std::any::type_name::<T>()
            ))
        })
    }

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

/// Why a phase attempt failed, whether trying again can help, and the cause chain (rendered
/// once, so it survives the checkpoint and reaches `dive runs show` whole). Any error type that
/// implements [`Classify`] converts into it with `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhaseError {
    retryable: bool,
    message: String,
    retry_after: Option<Duration>,
    state_db_unavailable: bool,
}

impl PhaseError {
    /// A transient failure (network, timeout, service starting): the retry policy applies.
    pub fn retryable(msg: impl Into<String>) -> Self {
        PhaseError {
            retryable: true,
            message: msg.into(),
            retry_after: None,
            state_db_unavailable: false,
        }
    }

    /// dive's own state database could not serve (see
    /// [`Classify::is_state_db_unavailable`]): the phase is tried again, and the attempt does
    /// not count against its retry policy or a breaker.
    pub fn state_db_unavailable(msg: impl Into<String>) -> Self {
        PhaseError {
            state_db_unavailable: true,
            ..PhaseError::retryable(msg)
        }
    }

    /// A failure a retry cannot fix (bad credentials, invalid configuration): the phase fails
    /// at once.
    pub fn fatal(msg: impl Into<String>) -> Self {
        PhaseError {
            retryable: false,
            message: msg.into(),
            retry_after: None,
            state_db_unavailable: false,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The least time to wait before the next attempt, when the failing service said so; the
    /// retry policy's delay is used when it is longer.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether the failure is the state database being unavailable, not the phase's target.
    pub fn is_state_db_unavailable(&self) -> bool {
        self.state_db_unavailable
    }

    /// The same error with `what` in front of its message (`what: message`).
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for PhaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PhaseError {}

impl<E: Classify> From<E> for PhaseError {
    fn from(e: E) -> Self {
        PhaseError {
            retryable: e.is_retryable() || e.is_state_db_unavailable(),
            message: dive_error::chain(&e),
            retry_after: e.retry_after(),
            state_db_unavailable: e.is_state_db_unavailable(),
        }
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

    /// Whether [`Phase::compensate`] also undoes what a *failed* attempt did part of. A phase
    /// that changes several objects can fail half-way (one side of a pair updated, the other
    /// not); a rollback would leave that first change behind. Such a phase's compensation works
    /// from the live state — it is given `Value::Null` as the output of a failed phase — and
    /// does nothing where nothing changed.
    fn compensates_failure(&self) -> bool {
        false
    }

    /// Undoes `run`, given the output it produced (`Value::Null` for a failed phase, see
    /// [`Phase::compensates_failure`]).
    async fn compensate(&self, _ctx: &PhaseContext, _output: &Value) -> Result<(), PhaseError> {
        Ok(())
    }

    /// Checks, before a new run starts, what can be known without changing anything (a
    /// required instance exists, say). A failure stops the run before anything is written and
    /// is reported as invalid input. Phases whose fields use other phases' outputs are skipped.
    async fn precheck(&self, _ctx: &PhaseContext) -> Result<(), String> {
        Ok(())
    }

    /// What [`Phase::run`] would change, found without changing anything (`dive … --dry-run`):
    /// read the live state, compare it with what the phase ensures, and return the difference
    /// and the output a run would give ([`crate::dry_run`]). Fields that use outputs of earlier
    /// phases may hold [`crate::dry_run::KNOWN_AFTER_APPLY`]. The default says the phase type
    /// cannot tell.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        Ok(PhasePlan::changes(
            vec![
                Change::new(
                    None,
                    format!("phase {}", ctx.phase_id),
                    Action::KnownAfterApply,
                )
                .because("this phase type cannot plan: it would run"),
            ],
            Value::Null,
        ))
    }

    /// Breaker group a phase type chooses for itself (e.g. `keycloak:FRA`); the workflow's
    /// `breaker:` field takes precedence.
    fn breaker_key(&self) -> Option<String> {
        None
    }
}
