//! `rotation.signing_retire`: after a grace period, the signing keys that
//! `rotation.signing_activate` made passive are disabled (they leave the JWKS; a token they
//! signed no longer validates), and keys that an earlier rotation disabled are deleted. The
//! grace is the realm's longest token lifetime by default (`grace: auto`): no token signed by a
//! retired key can still be in use.
//!
//! ```yaml
//! - id: signing-retire
//!   type: rotation.signing_retire
//!   after: [verify]
//!   code: "${params.code}"
//!   only: "${params.only}"
//!   grace: auto     # or a duration (short in tests)
//! ```
//! Output `{retired: [ids], deleted: [ids], grace_s}`.
//!
//! Idempotency: disabling a disabled key and deleting a deleted one change nothing; a resumed
//! run waits the grace again (never less). Compensation: none; it runs after the rotation was
//! verified and only removes keys nothing signs with.

use super::signing_publish::{key_change, planned_rotating, rotating};
use super::{default_only, signing_key_name};
use crate::federation::{admin, breaker};
use dive_engine::{Action, Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag};
use dive_keycloak::KeycloakAdmin;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

fn auto() -> String {
    "auto".into()
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateSigningRetire {
    pub code: String,
    #[serde(default = "default_only")]
    pub only: String,
    #[serde(default = "auto")]
    pub grace: String,
}

/// The realm's longest lifetime of a token it signs with its RSA key (access and ID tokens).
async fn longest_token_lifetime(
    admin: &KeycloakAdmin,
    realm: &str,
) -> Result<Duration, PhaseError> {
    let rep = admin.realm(realm).await?.ok_or_else(|| {
        PhaseError::fatal(format!("{}: realm {realm} does not exist", admin.name()))
    })?;
    let secs = ["accessTokenLifespan", "accessTokenLifespanForImplicitFlow"]
        .iter()
        .filter_map(|k| rep.extra.get(*k).and_then(Value::as_u64))
        .max()
        .unwrap_or(300);
    Ok(Duration::from_secs(secs))
}

impl RotateSigningRetire {
    fn grace(&self) -> Result<Option<Duration>, PhaseError> {
        if self.grace.trim() == "auto" {
            return Ok(None);
        }
        humantime::parse_duration(self.grace.trim())
            .map(Some)
            .map_err(|e| {
                PhaseError::fatal(format!(
                    "grace: `{}` is not a duration ({e}); expected `auto` or e.g. 5m, 10s",
                    self.grace
                ))
            })
    }
}

#[typetag::serde(name = "rotation.signing_retire")]
#[async_trait]
impl Phase for RotateSigningRetire {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let Some(rec) = rotating(ctx, &self.code, &self.only).await? else {
            return Ok(json!({ "retired": [], "deleted": [] }));
        };
        let realm = rec.realm();
        let grace = match self.grace()? {
            Some(g) => g,
            None => longest_token_lifetime(&admin(ctx, &rec).await?, &realm).await?,
        };
        ctx.note(format!(
            "the previous signing key stays valid for {}",
            humantime::format_duration(grace)
        ));
        tokio::select! {
            _ = tokio::time::sleep(grace) => {}
            _ = ctx.cancel.cancelled() => {
                return Err(PhaseError::retryable("cancelled while waiting out the grace period"));
            }
        }
        // A fresh login: the wait may have outlived the admin token.
        let admin_api = admin(ctx, &rec).await?;
        let name = signing_key_name(ctx);
        let mut retired = Vec::new();
        let mut deleted = Vec::new();
        for k in admin_api.signing_keys(&realm).await? {
            if k.name == name {
                continue;
            }
            if !k.enabled {
                admin_api.delete_signing_key(&realm, &k.id).await?;
                deleted.push(k.id);
            } else if !k.active {
                admin_api
                    .set_signing_key(&realm, &k.id, k.priority, false, false)
                    .await?;
                retired.push(k.id);
            }
        }
        Ok(json!({ "retired": retired, "deleted": deleted, "grace_s": grace.as_secs() }))
    }

    /// After the grace period: the keys signing now (passive by then) are disabled, and those
    /// an earlier rotation disabled are deleted.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let Some(rec) = planned_rotating(ctx, &self.code, &self.only).await? else {
            return Ok(PhasePlan::unchanged(
                json!({ "retired": [], "deleted": [] }),
            ));
        };
        let realm = rec.realm();
        let admin_api = admin(ctx, &rec).await?;
        let grace = match self.grace()? {
            Some(g) => g,
            None => longest_token_lifetime(&admin_api, &realm).await?,
        };
        let after = format!(
            "after the grace period ({})",
            humantime::format_duration(grace)
        );
        let mut changes = Vec::new();
        let (mut retired, mut deleted) = (Vec::new(), Vec::new());
        for k in admin_api.signing_keys(&realm).await? {
            let change = if k.enabled {
                retired.push(k.id.clone());
                key_change(&rec.code, &k.name, &realm, Action::Update).field("enabled", true, false)
            } else {
                deleted.push(k.id.clone());
                key_change(&rec.code, &k.name, &realm, Action::Delete)
            };
            changes.push(change.because(after.clone()));
        }
        Ok(PhasePlan::changes(
            changes,
            json!({ "retired": retired, "deleted": deleted, "grace_s": grace.as_secs() }),
        ))
    }

    async fn precheck(&self, _ctx: &PhaseContext) -> Result<(), String> {
        self.grace().map(|_| ()).map_err(|e| e.to_string())
    }

    fn breaker_key(&self) -> Option<String> {
        breaker(&self.code)
    }
}
