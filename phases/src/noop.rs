//! `noop`: does nothing and succeeds. For plumbing, tests and benchmarks.
//! Idempotent trivially; no compensation.

use dive_engine::{Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noop {
    /// Returned as the phase's output (default `{}`), so tests can feed references.
    #[serde(default)]
    pub output: Option<Value>,
}

#[typetag::serde(name = "noop")]
#[async_trait]
impl Phase for Noop {
    async fn run(&self, _ctx: &PhaseContext) -> Result<Value, PhaseError> {
        Ok(self.output.clone().unwrap_or_else(|| json!({})))
    }

    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        Ok(PhasePlan::unchanged(self.run(ctx).await?))
    }
}
