//! `rotation.signing_activate`: the key `rotation.signing_publish` made becomes the realm's
//! active signing key (it has the highest priority), and the keys that were active become
//! passive: they sign nothing from now on but stay in the JWKS, so tokens they signed still
//! validate at the partners until `rotation.signing_retire` disables them.
//!
//! ```yaml
//! - id: signing-activate
//!   type: rotation.signing_activate
//!   after: [signing-publish]
//!   code: "${params.code}"
//!   only: "${params.only}"
//! ```
//! Output `{activated, id, previous: [ids]}`.
//!
//! Idempotency: a new key that is already active, with no other key active, is left alone.
//! Compensation: the previous keys are active again and the new one passive.

use super::signing_publish::{NEW_KEY, key_change, planned_rotating, rotating};
use super::{default_only, signing_key_name};
use crate::context::Services;
use crate::federation::{admin, breaker, code, instance};
use dive_engine::{Action, Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateSigningActivate {
    pub code: String,
    #[serde(default = "default_only")]
    pub only: String,
}

#[typetag::serde(name = "rotation.signing_activate")]
#[async_trait]
impl Phase for RotateSigningActivate {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let Some(rec) = rotating(ctx, &self.code, &self.only).await? else {
            return Ok(json!({ "activated": false }));
        };
        let admin_api = admin(ctx, &rec).await?;
        let realm = rec.realm();
        let keys = admin_api.signing_keys(&realm).await?;
        let name = signing_key_name(ctx);
        let new = keys.iter().find(|k| k.name == name).ok_or_else(|| {
            PhaseError::fatal(format!(
                "{}: signing key {name} is gone from realm {realm}",
                admin_api.name()
            ))
        })?;
        let top = keys
            .iter()
            .map(|k| k.priority)
            .max()
            .unwrap_or(new.priority);
        if !new.active || !new.enabled || new.priority < top {
            admin_api
                .set_signing_key(&realm, &new.id, top.max(new.priority), true, true)
                .await?;
        }
        let mut previous = Vec::new();
        for k in keys
            .iter()
            .filter(|k| k.id != new.id && k.active && k.enabled)
        {
            admin_api
                .set_signing_key(&realm, &k.id, k.priority, false, true)
                .await?;
            previous.push(json!({ "id": k.id, "priority": k.priority }));
        }
        ctx.note(format!(
            "{name} signs from now on; {} key(s) passive",
            previous.len()
        ));
        Ok(json!({ "activated": true, "id": new.id, "previous": previous }))
    }

    /// The new key signs; each key that signs now turns passive.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let Some(rec) = planned_rotating(ctx, &self.code, &self.only).await? else {
            return Ok(PhasePlan::unchanged(json!({ "activated": false })));
        };
        let realm = rec.realm();
        let mut changes = vec![
            key_change(&rec.code, NEW_KEY, &realm, Action::Update).field("active", false, true),
        ];
        for k in admin(ctx, &rec).await?.signing_keys(&realm).await? {
            if k.active && k.enabled {
                changes.push(
                    key_change(&rec.code, &k.name, &realm, Action::Update)
                        .field("active", true, false)
                        .because("passive: tokens it signed still validate"),
                );
            }
        }
        Ok(PhasePlan::changes(changes, json!({ "activated": true })))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, output: &Value) -> Result<(), PhaseError> {
        if output["activated"] != json!(true) {
            return Ok(());
        }
        let code = code(&self.code)?;
        let Ok(rec) = instance(Services::of(ctx)?.instances(), &code).await else {
            return Ok(());
        };
        let admin_api = admin(ctx, &rec).await?;
        let realm = rec.realm();
        for k in output["previous"].as_array().into_iter().flatten() {
            if let (Some(id), Some(priority)) = (k["id"].as_str(), k["priority"].as_i64()) {
                admin_api
                    .set_signing_key(&realm, id, priority, true, true)
                    .await?;
            }
        }
        if let Some(id) = output["id"].as_str()
            && let Some(new) = admin_api
                .signing_keys(&realm)
                .await?
                .into_iter()
                .find(|k| k.id == id)
        {
            admin_api
                .set_signing_key(&realm, id, new.priority, false, true)
                .await?;
        }
        Ok(())
    }

    fn breaker_key(&self) -> Option<String> {
        breaker(&self.code)
    }
}
