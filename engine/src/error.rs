//! Errors the engine reports to its caller.

use crate::workflow::InvalidWorkflow;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    InvalidWorkflow(#[from] InvalidWorkflow),
    /// Another live run holds one of the run's lock keys (`key`: the first found held, in sorted
    /// order); the run took none of them.
    #[error("lock `{key}` is held by run {}", holder.map(|h| h.to_string()).unwrap_or_else(|| "(not yet recorded)".into()))]
    LockHeld { key: String, holder: Option<Uuid> },
    /// A lock (`key`) was lost during a database outage and another run took it meanwhile.
    #[error("lost lock `{key}` during a database outage; run {} holds it now — this run stopped and can be resumed with `dive resume {run}`", holder.map(|h| h.to_string()).unwrap_or_else(|| "(unknown)".into()))]
    LockLost {
        key: String,
        holder: Option<Uuid>,
        run: Uuid,
    },
    /// Phases' prechecks refused the run; nothing was written.
    #[error("{}", .0.join("\n"))]
    Precheck(Vec<String>),
    /// A phase could not be planned (a dry run) for a reason that is not the caller's input:
    /// a server that answered with an error, say.
    #[error("planning: {0}")]
    Plan(String),
    #[error("run {0} not found")]
    RunNotFound(Uuid),
    #[error("run {run} is {state}: {why}")]
    NotResumable {
        run: Uuid,
        state: String,
        why: String,
    },
    /// Stopped by the operator while the state database was unreachable; the run stays resumable.
    #[error("interrupted while waiting for the state database; resume with `dive resume {0}`")]
    Interrupted(Uuid),
    #[error("state database: {0}")]
    Store(#[from] sqlx::Error),
    #[error("state database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Two different migrations with one version (from two crates' migrators).
    #[error(
        "state database migration: version {version} is both `{first}` and `{second}`; every crate's migrations need versions of their own"
    )]
    MigrationConflict {
        version: i64,
        first: String,
        second: String,
    },
    /// A bug guard: the engine tried a transition its state machine forbids.
    #[error("{what}: transition {from} -> {to} is not allowed")]
    IllegalTransition {
        what: String,
        from: String,
        to: String,
    },
    #[error("stored data of run {run} is unreadable: {why}")]
    Corrupt { run: Uuid, why: String },
}

impl EngineError {
    /// Whether the failure is the caller's input (exit code 2 in the CLI).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            EngineError::InvalidWorkflow(_)
                | EngineError::Precheck(_)
                | EngineError::RunNotFound(_)
                | EngineError::NotResumable { .. }
        )
    }
}
