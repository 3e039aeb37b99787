//! `instance.reachable`: the registered instance's Keycloak serves its realm's OpenID discovery
//! document — a cheap first step of work that talks to an instance, so that a stopped or
//! unreachable Keycloak fails early, with its code and URL in the message, and opens the
//! instance's breaker (`keycloak:<CODE>`) instead of every later call timing out.
//!
//! ```yaml
//! - id: reach-spoke
//!   type: instance.reachable
//!   code: "${params.code}"
//! ```
//! Output `{code, url, latency_ms}`. Idempotency: it only reads. Compensation: none.

use crate::context::Services;
use dive_engine::{Phase, PhaseContext, PhaseError, async_trait, typetag};
use dive_instances::{Role, normalize_code};
use dive_runtime::health::url_ok;
use dive_tls::CERTIFICATE_REFUSED;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Instant;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceReachable {
    /// ISO 3166-1 alpha-3 code of a registered instance.
    pub code: String,
}

#[typetag::serde(name = "instance.reachable")]
#[async_trait]
impl Phase for InstanceReachable {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let code = normalize_code(&self.code).map_err(PhaseError::fatal)?;
        let registry = Services::of(ctx)?.instances();
        let rec = registry
            .get(&code)
            .await
            .map_err(|e| PhaseError::retryable(e.to_string()))?
            .ok_or_else(|| PhaseError::fatal(format!("instance {code} is not deployed")))?;
        let url = rec.keycloak_url();
        let started = Instant::now();
        url_ok(
            &format!(
                "{url}/realms/{}/.well-known/openid-configuration",
                rec.realm()
            ),
            Some(Services::of(ctx)?.trust()),
        )
        .await
        .map_err(|e| {
            if e.contains(CERTIFICATE_REFUSED) {
                return PhaseError::fatal(format!("keycloak {code} ({url}): {e}"));
            }
            PhaseError::retryable(format!(
                "keycloak {code} ({url}) is unreachable: {e} (is it running? `dive {} status{}`)",
                rec.role,
                match rec.role {
                    Role::Hub => format!(" --code {code}"),
                    Role::Spoke => format!(" {code}"),
                }
            ))
        })?;
        Ok(json!({
            "code": code,
            "url": url,
            "latency_ms": started.elapsed().as_millis() as u64,
        }))
    }

    async fn precheck(&self, ctx: &PhaseContext) -> Result<(), String> {
        if self.code.contains("${") {
            return Ok(());
        }
        let code = normalize_code(&self.code)?;
        let Ok(services) = Services::of(ctx) else {
            return Ok(());
        };
        let registry = services.instances();
        match registry.get(&code).await {
            Ok(None) => Err(format!("instance {code} is not deployed")),
            _ => Ok(()),
        }
    }

    fn breaker_key(&self) -> Option<String> {
        crate::federation::breaker(&self.code)
    }
}
