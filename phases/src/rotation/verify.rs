//! `rotation.verify`: a real brokered login in every direction of every link of `code` (every
//! test user of X logs in at P with the right claims), recorded like `federation.verify`. It
//! proves the rotated secrets work before the previous ones are dropped.
//!
//! ```yaml
//! - id: verify
//!   type: rotation.verify
//!   after: [provider]
//!   code: "${params.code}"
//! ```
//! Output `{directions: [{from, to, ok, latency_ms}]}`. Idempotency: it only reads and logs in.
//! Compensation: none.

use super::directions;
use crate::context::Services;
use dive_engine::{Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag};
use dive_verify::{Endpoint, record, verify_direction};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationVerify {
    pub code: String,
}

#[typetag::serde(name = "rotation.verify")]
#[async_trait]
impl Phase for RotationVerify {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let services = Services::of(ctx)?;
        let mut out = Vec::new();
        let mut failures = Vec::new();
        let mut state_db_unavailable = false;
        for d in directions(ctx, &self.code).await? {
            let report = verify_direction(
                services.secrets(),
                services.trust(),
                &Endpoint::from(&d.x),
                &Endpoint::from(&d.p),
                None,
            )
            .await;
            record(services.pool(), Some(ctx.run_id), &report).await?;
            state_db_unavailable |= report.state_db_unavailable;
            if let Some(why) = report.failure() {
                failures.push(format!("{}→{}: {why}", d.x.code, d.p.code));
            }
            out.push(json!({
                "from": d.x.code, "to": d.p.code, "ok": report.ok, "latency_ms": report.latency_ms,
            }));
        }
        if !failures.is_empty() {
            let message = format!(
                "federated logins failed after the rotation: {}",
                failures.join("; ")
            );
            return Err(crate::federation::login_failure(
                message,
                state_db_unavailable,
            ));
        }
        Ok(json!({ "directions": out }))
    }

    /// Logins only: nothing changes.
    async fn plan(&self, _ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        Ok(PhasePlan::unchanged(json!({ "directions": [] })))
    }
}
