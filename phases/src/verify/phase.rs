//! `federation.verify`: logs in through the federation in both directions between the hub and
//! spoke `code` as every test user, and fails unless every login arrives with the right claims.
//! Results are recorded with the run. Idempotency: it only reads and logs in (each login leaves
//! a short session). Compensation: none — nothing to undo.

use super::{Endpoint, record, verify_direction};
use crate::instance::{InstanceRecord, Instances};
use crate::service::secrets;
use dive_engine::{Phase, PhaseContext, PhaseError, Store, async_trait, typetag};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationVerify {
    /// The spoke; the hub is the registered one.
    pub code: String,
}

async fn instance(registry: &Instances, code: Option<&str>) -> Result<InstanceRecord, PhaseError> {
    let found = match code {
        Some(c) => registry.get(c).await,
        None => registry.hub().await,
    };
    match found {
        Ok(Some(rec)) => Ok(rec),
        Ok(None) => Err(PhaseError::fatal(format!(
            "{} is not deployed",
            code.unwrap_or("the hub")
        ))),
        Err(e) => Err(PhaseError::retryable(e.to_string())),
    }
}

#[typetag::serde(name = "federation.verify")]
#[async_trait]
impl Phase for FederationVerify {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let registry = ctx
            .services
            .get::<Instances>()
            .ok_or_else(|| PhaseError::fatal("no instance registry is available"))?;
        let store = ctx
            .services
            .get::<Store>()
            .ok_or_else(|| PhaseError::fatal("no state database is available"))?;
        let secrets = secrets(ctx)?;
        let hub = instance(&registry, None).await?;
        let spoke = instance(&registry, Some(&self.code)).await?;
        let hub = Endpoint::new(&hub.code, &hub.keycloak_url());
        let spoke = Endpoint::new(&spoke.code, &spoke.keycloak_url());
        let mut directions = Vec::new();
        let mut failed = Vec::new();
        for (from, to) in [(&hub, &spoke), (&spoke, &hub)] {
            ctx.note(format!(
                "logging in as the test users of {} at {}",
                from.code, to.code
            ));
            let report = verify_direction(&secrets, from, to).await;
            record(store.pool(), Some(ctx.run_id), &report)
                .await
                .map_err(|e| PhaseError::retryable(e.to_string()))?;
            if !report.ok {
                failed.push(format!(
                    "{} → {}: {}",
                    report.from,
                    report.to,
                    report.error.clone().unwrap_or_else(|| {
                        report
                            .users
                            .iter()
                            .filter(|u| !u.ok)
                            .map(|u| u.username.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                ));
            }
            directions.push(json!({
                "from": report.from,
                "to": report.to,
                "ok": report.ok,
                "latency_ms": report.latency_ms,
                "users": report.users.iter().map(|u| json!({"username": u.username, "ok": u.ok})).collect::<Vec<_>>(),
            }));
        }
        if !failed.is_empty() {
            return Err(PhaseError::retryable(format!(
                "federation logins failed: {}",
                failed.join("; ")
            )));
        }
        Ok(json!({ "code": self.code.to_uppercase(), "directions": directions }))
    }
}
