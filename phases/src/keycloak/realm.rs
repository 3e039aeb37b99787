//! `keycloak.realm`: ensures realm `dive-<code>` exists, is enabled and is named `DIVE <CODE>`.
//!
//! ```yaml
//! - id: realm
//!   type: keycloak.realm
//!   instance: FRA
//!   url: "${phases.keycloak.output.keycloak_url}"
//!   realm: dive-fra          # optional, default dive-<code>
//! ```
//! Output `{instance, realm, created, updated, changed}`.
//!
//! Idempotency: a missing realm is created (a 409 from a concurrent creator counts as "was
//! there"); an existing one is read and only written back (whole representation, so nothing
//! else changes) when it is disabled or its display name differs. A second run reports
//! `changed: false`.
//!
//! Compensation: deletes the realm only if this phase created it (output `created: true`), and
//! tolerates that it is already gone. A realm that was there before is never deleted.

use super::common::{Live, Target, flag, instance_code, realm_name};
use dive_engine::{
    Action, Change, Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag,
};
use dive_keycloak::types::RealmRep;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeycloakRealm {
    /// ISO 3166-1 alpha-3 code, any case.
    #[serde(deserialize_with = "instance_code")]
    pub instance: String,
    /// Keycloak base URL, e.g. `${phases.keycloak.output.keycloak_url}`.
    pub url: String,
    /// Default `dive-<code>`.
    #[serde(default, deserialize_with = "realm_name")]
    pub realm: Option<String>,
}

impl KeycloakRealm {
    fn target(&self) -> Result<Target, PhaseError> {
        Target::new(&self.instance, &self.url, self.realm.as_deref())
    }
}

#[typetag::serde(name = "keycloak.realm")]
#[async_trait]
impl Phase for KeycloakRealm {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let t = self.target()?;
        let admin = t.admin(ctx).await?;
        let display_name = format!("DIVE {}", t.upper);
        let wanted = RealmRep {
            realm: t.realm.clone(),
            display_name: Some(display_name.clone()),
            enabled: Some(true),
            ..Default::default()
        };
        // `None`: this run created it.
        let existing = match admin.realm(&t.realm).await? {
            Some(rep) => Some(rep),
            None => match admin.create_realm(&wanted).await {
                Ok(()) => None,
                // A concurrent creator was first: it is there now, ensure it like any other.
                Err(e) if e.is_conflict() => {
                    Some(admin.realm(&t.realm).await?.ok_or_else(|| {
                        PhaseError::retryable(format!(
                            "{}: realm `{}` vanished while it was being ensured",
                            admin.name(),
                            t.realm
                        ))
                    })?)
                }
                Err(e) => return Err(e.into()),
            },
        };
        let created = existing.is_none();
        let mut updated = false;
        if let Some(mut rep) = existing {
            if rep.enabled != Some(true) || rep.display_name.as_deref() != Some(&display_name) {
                rep.enabled = Some(true);
                rep.display_name = Some(display_name);
                admin.update_realm(&t.realm, &rep).await?;
                updated = true;
                tracing::info!(instance = %t.upper, realm = %t.realm, "updated realm");
            }
        } else {
            tracing::info!(instance = %t.upper, realm = %t.realm, "created realm");
        }
        Ok(json!({
            "instance": t.upper,
            "realm": t.realm,
            "created": created,
            "updated": updated,
            "changed": created || updated,
        }))
    }

    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let (t, live) = Target::live(&self.instance, &self.url, self.realm.as_deref(), ctx).await?;
        let display_name = format!("DIVE {}", t.upper);
        let output = |created: bool, updated: bool| {
            json!({ "instance": t.upper, "realm": t.realm, "created": created,
                    "updated": updated, "changed": created || updated })
        };
        let realm = format!("realm {}", t.realm);
        let change = |action| Change::new(Some(&t.upper), realm.clone(), action);
        Ok(match live {
            Live::Unknown(c) => PhasePlan::changes(vec![c], Value::Null),
            Live::New => PhasePlan::changes(
                vec![change(Action::Create).diff(
                    &Value::Null,
                    &json!({ "displayName": display_name, "enabled": true }),
                )],
                output(true, false),
            ),
            Live::Admin(admin) => {
                let rep = admin.realm(&t.realm).await?.unwrap_or_default();
                let have = json!({ "displayName": rep.display_name, "enabled": rep.enabled });
                let want = json!({ "displayName": display_name, "enabled": true });
                if have == want {
                    PhasePlan::unchanged(output(false, false))
                } else {
                    PhasePlan::changes(
                        vec![change(Action::Update).diff(&have, &want)],
                        output(false, true),
                    )
                }
            }
        })
    }

    fn has_compensation(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, output: &Value) -> Result<(), PhaseError> {
        if !flag(output, "created") {
            return Ok(());
        }
        let t = self.target()?;
        let admin = t.admin(ctx).await?;
        if admin.delete_realm(&t.realm).await? {
            tracing::info!(instance = %t.upper, realm = %t.realm, "deleted realm (compensation)");
        }
        Ok(())
    }

    fn breaker_key(&self) -> Option<String> {
        Target::breaker_key(&self.instance)
    }
}
