//! `federation.verify`: every test user of instance `from` logs in at instance `to` through the
//! federation (one direction), and the phase fails unless every login arrives with the right
//! claims. The result is recorded in `federation_verifications` with the run id, whether it
//! passed or not, so `dive federation verify` and `status` read it from there.
//!
//! ```yaml
//! - id: hub-to-spoke
//!   type: federation.verify
//!   from: "${params.hub}"
//!   to: "${params.code}"
//! ```
//! Output `{from, to, ok, latency_ms, users: [{username, ok}]}`. Idempotency: it only reads and
//! logs in (each login leaves a short session at both sides). Compensation: none.

use super::{code_field, resolve};
use crate::context::Services;
use dive_engine::{Phase, PhaseContext, PhaseError, async_trait, typetag};
use dive_verify::{Endpoint, record, verify_direction};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationVerify {
    /// Whose users log in.
    #[serde(deserialize_with = "code_field")]
    pub from: String,
    /// Where they log in.
    #[serde(deserialize_with = "code_field")]
    pub to: String,
}

/// Failed logins as a phase error: retryable, and not spending an attempt when the cause was
/// dive's state database (a password it could not read), not the federation.
pub(crate) fn login_failure(message: String, state_db_unavailable: bool) -> PhaseError {
    if state_db_unavailable {
        PhaseError::state_db_unavailable(message)
    } else {
        PhaseError::retryable(message)
    }
}

#[typetag::serde(name = "federation.verify")]
#[async_trait]
impl Phase for FederationVerify {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let (x, p) = resolve(ctx, &self.from, &self.to).await?;
        let services = Services::of(ctx)?;
        let secrets = services.secrets();
        ctx.note(format!(
            "logging in as the test users of {} at {}",
            x.code, p.code
        ));
        let report = verify_direction(
            secrets,
            services.trust(),
            &Endpoint::from(&x),
            &Endpoint::from(&p),
            None,
        )
        .await;
        record(services.pool(), Some(ctx.run_id), &report).await?;
        if !report.ok {
            let message = format!(
                "federation logins {} → {} failed: {}",
                report.from,
                report.to,
                report.failure().unwrap_or_default()
            );
            return Err(login_failure(message, report.state_db_unavailable));
        }
        Ok(json!({
            "from": report.from,
            "to": report.to,
            "ok": report.ok,
            "latency_ms": report.latency_ms,
            "users": report.users.iter().map(|u| json!({"username": u.username, "ok": u.ok})).collect::<Vec<_>>(),
        }))
    }

    async fn precheck(&self, ctx: &PhaseContext) -> Result<(), String> {
        let reg = Services::of(ctx).map_err(|e| e.to_string())?.instances();
        super::pair(reg, &self.from, &self.to).await.map(|_| ())
    }
}
