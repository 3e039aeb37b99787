//! dive-engine: durable DAG runs. Workflow files become plans; plans run with PostgreSQL
//! checkpoints, retries, circuit breakers, rollback and locks. Knows nothing about Docker or
//! Keycloak: phase types live in other crates and register themselves with typetag.

pub mod breakers;
pub mod dry_run;
pub mod error;
pub mod events;
pub mod interpolate;
pub mod lock_expand;
pub mod params;
pub mod phase;
pub mod plan;
mod runconn;
pub mod runner;
pub mod scheduler;
pub mod state;
pub mod store;
pub mod subflow;
pub mod workflow;

pub use breakers::BreakerPolicy;
pub use dry_run::{Action, Change, DryRun, KNOWN_AFTER_APPLY, PhasePlan, SENSITIVE};
pub use error::EngineError;
pub use events::{Event, EventSink};
pub use lock_expand::{LockExpander, NoExpansion};
pub use phase::{Classify, Phase, PhaseContext, PhaseError};
pub use plan::{COMPENSATION_PATIENCE, Plan, PlannedPhase, RetryPolicy};
pub use runner::{Engine, RunOptions, RunOutcome};
pub use state::{PhaseState, RunState};
pub use store::Store;
pub use subflow::{NoWorkflows, WorkflowCatalog};
pub use workflow::{BaseResolver, InvalidWorkflow, Workflow};

// Re-exported so phase crates register with the same versions the engine deserialises with.
pub use async_trait::async_trait;
pub use typetag;
