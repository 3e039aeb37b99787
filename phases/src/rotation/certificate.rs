//! `rotation.certificate` (kind `certificate`): the instance's Keycloak gets a new certificate of
//! the dive CA without a failed login. The new certificate is recorded in the store first
//! (`<code>/keycloak/tls`, marked with the run), then the instance converges with its deploy
//! workflow as a child run (`instance-deploy`): the certificate and key are live files, so the
//! running Keycloak is given them in place — no restart — and rereads them within 30 s; the
//! phase then waits until Keycloak presents the new certificate. Both certificates come from the
//! one CA every client and partner trusts, so logins go on throughout. Output `{rotated,
//! not_after, served_after_ms}`.
//!
//! ```yaml
//! - id: certificate
//!   type: rotation.certificate
//!   after: [database]
//!   code: "${params.code}"
//!   only: "${params.only}"
//!   older_than: "${params.older_than}"
//! ```
//! `older_than`: a certificate issued more recently is kept (`rotated: false`).
//!
//! Idempotency: once per run — the store marks the version with the run, so a resumed run
//! converges to the certificate it already issued. Compensation: that version is removed from
//! the store, the instance converges again and the phase waits until the previous certificate
//! is served.

use super::{converge, default_only, origin, selected, zero_duration};
use crate::context::Services;
use crate::federation::{breaker, code, instance};
use crate::tls::{certificate, certificate_secret, names};
use dive_engine::{
    Action, Change, Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag,
};
use dive_instances::InstanceRecord;
use dive_secrets::Secret;
use dive_tls::Certificate;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// How long Keycloak may take to present a renewed certificate: its reload period (30 s) and
/// some slack.
const SERVED_WITHIN: Duration = Duration::from_secs(90);

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateCertificate {
    pub code: String,
    #[serde(default = "default_only")]
    pub only: String,
    #[serde(default = "zero_duration")]
    pub older_than: String,
}

impl RotateCertificate {
    /// Waits until `rec`'s Keycloak presents the store's current certificate; returns it and how
    /// long that took.
    async fn until_served(
        &self,
        ctx: &PhaseContext,
        rec: &InstanceRecord,
    ) -> Result<(Certificate, Duration), PhaseError> {
        let services = Services::of(ctx)?;
        let (cert, _) = certificate(services.secrets(), &rec.code)
            .await
            .map_err(|e| PhaseError::fatal(e.to_string()))?
            .ok_or_else(|| PhaseError::fatal(format!("{} has no certificate", rec.code)))?;
        let want = cert.der();
        let url = format!("{}/realms/master", rec.keycloak_url());
        let started = Instant::now();
        loop {
            let last = match dive_tls::served_certificate(services.trust(), &url).await {
                Ok(der) if der == want => return Ok((cert, started.elapsed())),
                Ok(_) => "the previous certificate".to_string(),
                Err(e) => e,
            };
            if started.elapsed() > SERVED_WITHIN {
                return Err(PhaseError::retryable(format!(
                    "keycloak {} still presents {last} after {}s",
                    rec.code,
                    SERVED_WITHIN.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[typetag::serde(name = "rotation.certificate")]
#[async_trait]
impl Phase for RotateCertificate {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        if !selected(&self.only, "certificate")? {
            return Ok(json!({ "rotated": false }));
        }
        let code = code(&self.code)?;
        let services = Services::of(ctx)?;
        let store = services.secrets();
        let rec = instance(services.instances(), &code)
            .await
            .map_err(PhaseError::fatal)?;
        let name = certificate_secret(&code);
        let origin = origin(ctx);
        if let Some(age) = super::too_young(store, &name, &origin, &self.older_than).await? {
            return Ok(json!({ "rotated": false, "skipped_age_s": age.as_secs() }));
        }
        let fresh = services
            .authority()
            .issue(&names(&rec), services.cert_lifetime())
            .map_err(|e| PhaseError::fatal(e.to_string()))?;
        // Once per run: a resumed run gets back the certificate it recorded before.
        store
            .record(&name, &origin, &Secret::new(fresh.to_pem().as_str()))
            .await?;
        ctx.note(format!(
            "renewing {}'s certificate in place (Keycloak rereads it; no restart)",
            rec.code
        ));
        converge(ctx, &rec).await?;
        let (cert, took) = self.until_served(ctx, &rec).await?;
        Ok(json!({
            "rotated": true,
            "not_after": cert.not_after(),
            "served_after_ms": took.as_millis() as u64,
        }))
    }

    /// A new certificate, unless the kind is not selected or the current one is younger than
    /// `older_than`.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        if !selected(&self.only, "certificate")? {
            return Ok(PhasePlan::unchanged(json!({ "rotated": false })));
        }
        let code = code(&self.code)?;
        let services = Services::of(ctx)?;
        let name = certificate_secret(&code);
        if let Some(age) =
            super::too_young(services.secrets(), &name, &origin(ctx), &self.older_than).await?
        {
            return Ok(PhasePlan::unchanged(
                json!({ "rotated": false, "skipped_age_s": age.as_secs() }),
            ));
        }
        let current = certificate(services.secrets(), &code)
            .await
            .map_err(|e| PhaseError::fatal(e.to_string()))?;
        let not_after = chrono::Utc::now()
            + chrono::Duration::from_std(services.cert_lifetime()).unwrap_or_default();
        let not_after = not_after.format("%Y-%m-%d").to_string();
        let old = current.map(|(cert, _)| cert.not_after().format("%Y-%m-%d").to_string());
        Ok(PhasePlan::changes(
            vec![
                Change::new(Some(&code), format!("certificate {name}"), Action::Update)
                    .field("not_after", old, not_after.clone())
                    .because("renewed in place: Keycloak rereads it, no restart"),
            ],
            json!({ "rotated": true, "not_after": not_after }),
        ))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, output: &Value) -> Result<(), PhaseError> {
        if output["rotated"] != json!(true) {
            return Ok(());
        }
        let code = code(&self.code)?;
        let services = Services::of(ctx)?;
        let rec = instance(services.instances(), &code)
            .await
            .map_err(PhaseError::fatal)?;
        services
            .secrets()
            .unmint(&certificate_secret(&code), &origin(ctx))
            .await?;
        // Converge and wait even when nothing was left to unmint: a retried compensation must
        // still bring the previous certificate back.
        converge(ctx, &rec).await?;
        self.until_served(ctx, &rec).await?;
        Ok(())
    }

    async fn precheck(&self, _ctx: &PhaseContext) -> Result<(), String> {
        super::parse_older_than(&self.older_than)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn breaker_key(&self) -> Option<String> {
        breaker(&self.code)
    }
}
