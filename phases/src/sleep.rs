//! `sleep`: waits for `duration`. For tests and benchmarks of scheduling and timeouts.
//! Idempotent trivially; no compensation.

use dive_engine::{Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sleep {
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

#[typetag::serde(name = "sleep")]
#[async_trait]
impl Phase for Sleep {
    async fn run(&self, _ctx: &PhaseContext) -> Result<Value, PhaseError> {
        tokio::time::sleep(self.duration).await;
        Ok(json!({ "slept_ms": self.duration.as_millis() as u64 }))
    }

    /// Waiting changes nothing.
    async fn plan(&self, _ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        Ok(PhasePlan::unchanged(
            json!({ "slept_ms": self.duration.as_millis() as u64 }),
        ))
    }
}
