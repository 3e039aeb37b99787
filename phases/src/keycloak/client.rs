//! `keycloak.client`: ensures the verification client `dive-verify`, used for scripted logins
//! (federation verification, deploy tests).
//!
//! ```yaml
//! - id: client
//!   type: keycloak.client
//!   after: [scope]
//!   instance: FRA
//!   url: "${phases.keycloak.output.keycloak_url}"
//!   client_id: dive-verify    # optional, default dive-verify
//! ```
//! The client is public (no secret), has the standard flow with PKCE S256
//! (`pkce.code.challenge.method`), redirect URI `http://127.0.0.1/dive-verify/callback`, no
//! implicit flow or service account, and direct access grants (password grant, for scripted
//! checks); `dive-attributes` is one of its default client scopes, so its tokens carry the four
//! DIVE claims. Needs the scope (`keycloak.client-scope`) first. Output `{instance, realm,
//! client_id, id, created, updated, scope_added, changed}`.
//!
//! Idempotency: a missing client is created; an existing one is read and written back (whole
//! representation) only when one of the settings above differs; the default scope is added
//! only when missing. A second run reports `changed: false`.
//!
//! Compensation: deletes the client only if this phase created it (output `created: true`);
//! tolerates that it (or its realm) is already gone.

use super::client_scope::SCOPE_NAME;
use super::common::{Live, Target, flag, instance_code, realm_name, to_json};
use dive_engine::{
    Action, KNOWN_AFTER_APPLY, Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag,
};
use dive_keycloak::KeycloakAdmin;
use dive_keycloak::types::ClientRep;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// Redirect URI of the verification client. Fixed: it is where the verifier's brokered login stops
/// (`dive_verify::CALLBACK_URI`, never requested), so the two must stay equal.
pub const REDIRECT_URI: &str = "http://127.0.0.1/dive-verify/callback";
const PKCE_ATTRIBUTE: &str = "pkce.code.challenge.method";

fn default_client_id() -> String {
    "dive-verify".into()
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeycloakClient {
    #[serde(deserialize_with = "instance_code")]
    pub instance: String,
    pub url: String,
    #[serde(default, deserialize_with = "realm_name")]
    pub realm: Option<String>,
    #[serde(default = "default_client_id")]
    pub client_id: String,
}

/// The client as dive wants it.
fn wanted(client_id: &str) -> ClientRep {
    ClientRep {
        client_id: client_id.to_string(),
        name: Some("DIVE verification".into()),
        enabled: Some(true),
        protocol: Some("openid-connect".into()),
        public_client: Some(true),
        standard_flow_enabled: Some(true),
        implicit_flow_enabled: Some(false),
        direct_access_grants_enabled: Some(true),
        service_accounts_enabled: Some(false),
        redirect_uris: Some(vec![REDIRECT_URI.into()]),
        attributes: Some(BTreeMap::from([(
            PKCE_ATTRIBUTE.to_string(),
            "S256".to_string(),
        )])),
        // Not `defaultClientScopes`: given on creation, that list *replaces* the realm's
        // default scopes (profile, email, basic, ...); dive-attributes is added on its own.
        ..Default::default()
    }
}

/// Corrects what differs from `want` in `have`; returns the names of the settings changed.
/// Shared by every client dive manages (dive-verify, the federation clients).
pub(crate) fn merge_client(have: &mut ClientRep, want: &ClientRep) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! same {
        ($field:ident, $name:literal) => {
            if have.$field != want.$field {
                have.$field = want.$field.clone();
                changed.push($name);
            }
        };
    }
    same!(enabled, "enabled");
    same!(protocol, "protocol");
    same!(public_client, "publicClient");
    same!(standard_flow_enabled, "standardFlowEnabled");
    same!(implicit_flow_enabled, "implicitFlowEnabled");
    same!(direct_access_grants_enabled, "directAccessGrantsEnabled");
    same!(service_accounts_enabled, "serviceAccountsEnabled");
    let set = |v: &Option<Vec<String>>| v.iter().flatten().cloned().collect::<BTreeSet<_>>();
    if set(&have.redirect_uris) != set(&want.redirect_uris) {
        have.redirect_uris = want.redirect_uris.clone();
        changed.push("redirectUris");
    }
    let attributes = have.attributes.get_or_insert_with(BTreeMap::new);
    for (k, v) in want.attributes.iter().flatten() {
        if attributes.get(k) != Some(v) {
            attributes.insert(k.clone(), v.clone());
            if !changed.contains(&"attributes") {
                changed.push("attributes");
            }
        }
    }
    let auth = "clientAuthenticatorType";
    if let Some(w) = want.extra.get(auth)
        && have.extra.get(auth) != Some(w)
    {
        have.extra.insert(auth.into(), w.clone());
        changed.push(auth);
    }
    changed
}

impl KeycloakClient {
    fn target(&self) -> Result<Target, PhaseError> {
        Target::new(&self.instance, &self.url, self.realm.as_deref())
    }

    async fn scope_id(admin: &KeycloakAdmin, realm: &str) -> Result<String, PhaseError> {
        admin
            .client_scope_by_name(realm, SCOPE_NAME)
            .await?
            .and_then(|s| s.id)
            .ok_or_else(|| {
                PhaseError::fatal(format!(
                    "{}: client scope {SCOPE_NAME} does not exist in realm {realm} (add a \
                     keycloak.client-scope phase before this one)",
                    admin.name()
                ))
            })
    }
}

#[typetag::serde(name = "keycloak.client")]
#[async_trait]
impl Phase for KeycloakClient {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let t = self.target()?;
        let admin = t.admin(ctx).await?;
        t.require_realm(&admin).await?;
        let scope_id = Self::scope_id(&admin, &t.realm).await?;
        let want = wanted(&self.client_id);

        let mut created = false;
        let mut fixed = Vec::new();
        let existing = match admin.client_by_client_id(&t.realm, &self.client_id).await? {
            Some(c) => Some(c),
            None => match admin.create_client(&t.realm, &want).await {
                Ok(_) => {
                    created = true;
                    None
                }
                Err(e) if e.is_conflict() => None,
                Err(e) => return Err(e.into()),
            },
        };
        // Read back what Keycloak stored (new or concurrent), then correct what differs.
        let mut have = match existing {
            Some(c) => c,
            None => admin
                .client_by_client_id(&t.realm, &self.client_id)
                .await?
                .ok_or_else(|| {
                    PhaseError::retryable(format!(
                        "{}: client {} is not listed after creating it",
                        admin.name(),
                        self.client_id
                    ))
                })?,
        };
        let id = have.id.clone().ok_or_else(|| {
            PhaseError::fatal(format!(
                "{}: client {} has no id",
                admin.name(),
                self.client_id
            ))
        })?;
        fixed.extend(merge_client(&mut have, &want));
        if !fixed.is_empty() {
            admin.update_client(&t.realm, &id, &have).await?;
        }
        let scopes = admin.client_default_scopes(&t.realm, &id).await?;
        let scope_added = !scopes.iter().any(|s| s.id.as_deref() == Some(&scope_id));
        if scope_added {
            admin
                .add_client_default_scope(&t.realm, &id, &scope_id)
                .await?;
        }
        let updated = !created && !fixed.is_empty();
        let changed = created || !fixed.is_empty() || scope_added;
        if changed {
            tracing::info!(instance = %t.upper, realm = %t.realm, client = %self.client_id,
                created, ?fixed, scope_added, "ensured client");
        }
        Ok(json!({
            "instance": t.upper,
            "realm": t.realm,
            "client_id": self.client_id,
            "id": id,
            "created": created,
            "updated": updated,
            "fixed": fixed,
            "scope_added": scope_added,
            "changed": changed,
        }))
    }

    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let (t, live) = Target::live(&self.instance, &self.url, self.realm.as_deref(), ctx).await?;
        let want = wanted(&self.client_id);
        let client = format!("client {}", self.client_id);
        let scope = format!("default scope {SCOPE_NAME} of client {}", self.client_id);
        let output = |id: Value, created: bool, fixed: &[&str], scope_added: bool| {
            json!({ "instance": t.upper, "realm": t.realm, "client_id": self.client_id,
                    "id": id, "created": created, "updated": !created && !fixed.is_empty(),
                    "fixed": fixed, "scope_added": scope_added,
                    "changed": created || !fixed.is_empty() || scope_added })
        };
        let admin = match live {
            Live::Unknown(c) => return Ok(PhasePlan::changes(vec![c], Value::Null)),
            Live::New => {
                return Ok(PhasePlan::changes(
                    vec![
                        t.change(&client, Action::Create)
                            .diff(&Value::Null, &to_json(&want)),
                        t.change(&scope, Action::Create),
                    ],
                    output(KNOWN_AFTER_APPLY.into(), true, &[], true),
                ));
            }
            Live::Admin(admin) => admin,
        };
        let mut changes = Vec::new();
        let (id, created, fixed) =
            match admin.client_by_client_id(&t.realm, &self.client_id).await? {
                None => {
                    changes.push(
                        t.change(&client, Action::Create)
                            .diff(&Value::Null, &to_json(&want)),
                    );
                    (None, true, Vec::new())
                }
                Some(have) => {
                    let mut merged = have.clone();
                    let fixed = merge_client(&mut merged, &want);
                    if !fixed.is_empty() {
                        changes.push(
                            t.change(&client, Action::Update)
                                .diff(&to_json(&have), &to_json(&merged)),
                        );
                    }
                    (have.id, false, fixed)
                }
            };
        let scope_id = admin
            .client_scope_by_name(&t.realm, SCOPE_NAME)
            .await?
            .and_then(|s| s.id);
        let scope_added = match (&id, &scope_id) {
            (Some(id), Some(scope_id)) => !admin
                .client_default_scopes(&t.realm, id)
                .await?
                .iter()
                .any(|s| s.id.as_deref() == Some(scope_id)),
            _ => true,
        };
        if scope_added {
            changes.push(t.change(&scope, Action::Create));
        }
        let id = id.map_or(KNOWN_AFTER_APPLY.into(), Value::from);
        Ok(PhasePlan::changes(
            changes,
            output(id, created, &fixed, scope_added),
        ))
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
        if admin.realm(&t.realm).await?.is_none() {
            return Ok(());
        }
        if let Some(id) = admin
            .client_by_client_id(&t.realm, &self.client_id)
            .await?
            .and_then(|c| c.id)
        {
            admin.delete_client(&t.realm, &id).await?;
            tracing::info!(instance = %t.upper, realm = %t.realm, client = %self.client_id,
                "deleted client (compensation)");
        }
        Ok(())
    }

    fn breaker_key(&self) -> Option<String> {
        Target::breaker_key(&self.instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_corrects_only_what_differs() {
        let want = wanted("dive-verify");
        let mut have = want.clone();
        have.id = Some("x".into());
        have.attributes
            .as_mut()
            .unwrap()
            .insert("post.logout.redirect.uris".into(), "+".into());
        have.extra.insert("fullScopeAllowed".into(), json!(true));
        assert!(merge_client(&mut have, &want).is_empty());

        have.public_client = Some(false);
        have.redirect_uris = Some(vec!["*".into()]);
        have.attributes.as_mut().unwrap().remove(PKCE_ATTRIBUTE);
        assert_eq!(
            merge_client(&mut have, &want),
            ["publicClient", "redirectUris", "attributes"]
        );
        assert_eq!(have.public_client, Some(true));
        assert_eq!(have.attributes.as_ref().unwrap()[PKCE_ATTRIBUTE], "S256");
        assert_eq!(
            have.attributes.as_ref().unwrap()["post.logout.redirect.uris"],
            "+"
        );
        assert_eq!(have.extra["fullScopeAllowed"], json!(true));
    }
}
