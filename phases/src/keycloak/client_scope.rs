//! `keycloak.client-scope`: ensures client scope `dive-attributes`, which puts the four DIVE
//! attributes into ID, access and userinfo tokens, and makes it a realm default scope (new
//! clients get it).
//!
//! ```yaml
//! - id: scope
//!   type: keycloak.client-scope
//!   after: [profile]
//!   instance: FRA
//!   url: "${phases.keycloak.output.keycloak_url}"
//! ```
//! The scope (protocol `openid-connect`, `include.in.token.scope: true`) has one
//! `oidc-usermodel-attribute-mapper` per attribute, named like it: claim name = attribute
//! name, `jsonType.label: String`, ID/access/userinfo/introspection claims on, `multivalued`
//! for `acpCOI` only (so it is a JSON array in tokens). Output `{instance, realm, scope, id,
//! created, updated, mappers_added, mappers_updated, realm_default_added, changed}`.
//!
//! Idempotency: scope, mappers and the realm default are each checked and only created or
//! corrected when missing or different; mapper settings dive does not declare are kept, and
//! mappers dive does not know are left alone. A second run reports `changed: false`.
//!
//! Compensation: when this phase created the scope, removes it from the realm defaults and
//! deletes it; when it only added the realm default, removes that. What was there before the
//! run stays. Both tolerate that the scope (or the realm) is already gone.

use super::common::{Live, Target, flag, instance_code, realm_name, to_json};
use dive_engine::{
    Action, KNOWN_AFTER_APPLY, Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag,
};
use dive_keycloak::DIVE_ATTRIBUTES;
use dive_keycloak::KeycloakAdmin;
use dive_keycloak::types::{ClientScopeRep, ProtocolMapperRep};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The scope's name. Fixed: `federation.client` adds the scope to every federation client by this
/// name, and drift detection looks it up by it.
pub const SCOPE_NAME: &str = "dive-attributes";
const PROTOCOL: &str = "openid-connect";
const MAPPER_TYPE: &str = "oidc-usermodel-attribute-mapper";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeycloakClientScope {
    #[serde(deserialize_with = "instance_code")]
    pub instance: String,
    pub url: String,
    #[serde(default, deserialize_with = "realm_name")]
    pub realm: Option<String>,
}

fn scope_attributes() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("include.in.token.scope".to_string(), "true".to_string()),
        ("display.on.consent.screen".to_string(), "false".to_string()),
    ])
}

/// The mappers dive wants, in [`DIVE_ATTRIBUTES`] order.
pub(crate) fn wanted_mappers() -> Vec<ProtocolMapperRep> {
    DIVE_ATTRIBUTES
        .iter()
        .map(|&attr| ProtocolMapperRep {
            name: attr.to_string(),
            protocol: PROTOCOL.into(),
            protocol_mapper: MAPPER_TYPE.into(),
            config: [
                ("user.attribute", attr),
                ("claim.name", attr),
                ("jsonType.label", "String"),
                ("id.token.claim", "true"),
                ("access.token.claim", "true"),
                ("userinfo.token.claim", "true"),
                ("introspection.token.claim", "true"),
                (
                    "multivalued",
                    if attr == "acpCOI" { "true" } else { "false" },
                ),
                ("aggregate.attrs", "false"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        })
        .collect()
}

/// Adds missing config entries of `want` to `have` and corrects differing ones; returns
/// whether anything changed.
fn merge_config(have: &mut BTreeMap<String, String>, want: &BTreeMap<String, String>) -> bool {
    let mut changed = false;
    for (k, v) in want {
        if have.get(k) != Some(v) {
            have.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    changed
}

/// Names of the wanted mappers that `scope` lacks or has with other settings (for drift).
pub(crate) fn mapper_differences(scope: &ClientScopeRep) -> Vec<String> {
    let have = scope.protocol_mappers.as_deref().unwrap_or_default();
    wanted_mappers()
        .into_iter()
        .filter_map(|want| match have.iter().find(|m| m.name == want.name) {
            None => Some(format!("mapper {} is missing", want.name)),
            Some(m) => {
                let mut config = m.config.clone();
                (m.protocol_mapper != want.protocol_mapper
                    || merge_config(&mut config, &want.config))
                .then(|| format!("mapper {} has other settings", want.name))
            }
        })
        .collect()
}

impl KeycloakClientScope {
    fn target(&self) -> Result<Target, PhaseError> {
        Target::new(&self.instance, &self.url, self.realm.as_deref())
    }

    /// Finds or creates the scope and corrects its settings; returns it, whether it was
    /// created, and whether an existing one was updated.
    async fn ensure_scope(
        admin: &KeycloakAdmin,
        realm: &str,
    ) -> Result<(ClientScopeRep, bool, bool), PhaseError> {
        let mut created = false;
        let mut scope = match admin.client_scope_by_name(realm, SCOPE_NAME).await? {
            Some(s) => s,
            None => {
                let rep = ClientScopeRep {
                    name: SCOPE_NAME.into(),
                    description: Some(
                        "DIVE coalition attributes: uniqueID, clearance, countryOfAffiliation, \
                         acpCOI"
                            .into(),
                    ),
                    protocol: Some(PROTOCOL.into()),
                    attributes: scope_attributes(),
                    ..Default::default()
                };
                match admin.create_client_scope(realm, &rep).await {
                    Ok(_) => created = true,
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e.into()),
                }
                admin
                    .client_scope_by_name(realm, SCOPE_NAME)
                    .await?
                    .ok_or_else(|| {
                        PhaseError::retryable(format!(
                            "{}: client scope {SCOPE_NAME} is not listed after creating it",
                            admin.name()
                        ))
                    })?
            }
        };
        let id = scope_id(admin, &scope)?;
        let mut updated = false;
        let attributes_changed = merge_config(&mut scope.attributes, &scope_attributes());
        if attributes_changed || scope.protocol.as_deref() != Some(PROTOCOL) {
            scope.protocol = Some(PROTOCOL.into());
            // Mappers are handled one by one below.
            scope.protocol_mappers = None;
            admin.update_client_scope(realm, &id, &scope).await?;
            updated = !created;
        }
        Ok((scope, created, updated))
    }
}

fn scope_id(admin: &KeycloakAdmin, scope: &ClientScopeRep) -> Result<String, PhaseError> {
    scope.id.clone().ok_or_else(|| {
        PhaseError::fatal(format!(
            "{}: client scope {} has no id",
            admin.name(),
            scope.name
        ))
    })
}

fn mapper_id(admin: &KeycloakAdmin, mapper: &ProtocolMapperRep) -> Result<String, PhaseError> {
    mapper.id.clone().ok_or_else(|| {
        PhaseError::fatal(format!(
            "{}: protocol mapper {} has no id",
            admin.name(),
            mapper.name
        ))
    })
}

#[typetag::serde(name = "keycloak.client-scope")]
#[async_trait]
impl Phase for KeycloakClientScope {
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let (t, live) = Target::live(&self.instance, &self.url, self.realm.as_deref(), ctx).await?;
        let scope = format!("client scope {SCOPE_NAME}");
        let mapper = |name: &str| format!("mapper {name} of client scope {SCOPE_NAME}");
        let default = format!("realm default client scope {SCOPE_NAME}");
        let (have, mappers, is_default) = match live {
            Live::Unknown(c) => return Ok(PhasePlan::changes(vec![c], Value::Null)),
            Live::New => (None, Vec::new(), false),
            Live::Admin(admin) => match admin.client_scope_by_name(&t.realm, SCOPE_NAME).await? {
                None => (None, Vec::new(), false),
                Some(have) => {
                    let id = scope_id(&admin, &have)?;
                    let mappers = admin.client_scope_mappers(&t.realm, &id).await?;
                    let defaults = admin.default_default_client_scopes(&t.realm).await?;
                    let is_default = defaults.iter().any(|s| s.id.as_deref() == Some(&id));
                    (Some(have), mappers, is_default)
                }
            },
        };
        let mut changes = Vec::new();
        let (created, mut updated) = (have.is_none(), false);
        let id = match &have {
            None => {
                let want = json!({ "protocol": PROTOCOL, "attributes": scope_attributes() });
                changes.push(t.change(&scope, Action::Create).diff(&Value::Null, &want));
                Value::from(KNOWN_AFTER_APPLY)
            }
            Some(have) => {
                let mut attributes = have.attributes.clone();
                if merge_config(&mut attributes, &scope_attributes())
                    || have.protocol.as_deref() != Some(PROTOCOL)
                {
                    updated = true;
                    changes.push(t.change(&scope, Action::Update).diff(
                        &json!({ "protocol": have.protocol, "attributes": have.attributes }),
                        &json!({ "protocol": PROTOCOL, "attributes": attributes }),
                    ));
                }
                Value::from(have.id.clone())
            }
        };
        let (mut mappers_added, mut mappers_updated) = (Vec::new(), Vec::new());
        for want in wanted_mappers() {
            match mappers.iter().find(|m| m.name == want.name) {
                None => {
                    changes.push(
                        t.change(mapper(&want.name), Action::Create)
                            .diff(&Value::Null, &to_json(&want)),
                    );
                    mappers_added.push(want.name.clone());
                }
                Some(have) => {
                    let mut merged = have.clone();
                    if have.protocol_mapper != want.protocol_mapper {
                        merged = want.clone();
                    } else if !merge_config(&mut merged.config, &want.config) {
                        continue;
                    }
                    changes.push(
                        t.change(mapper(&want.name), Action::Update)
                            .diff(&to_json(have), &to_json(&merged)),
                    );
                    mappers_updated.push(want.name.clone());
                }
            }
        }
        if !is_default {
            changes.push(t.change(&default, Action::Create));
        }
        let changed = !changes.is_empty();
        Ok(PhasePlan::changes(
            changes,
            json!({ "instance": t.upper, "realm": t.realm, "scope": SCOPE_NAME, "id": id,
                    "created": created, "updated": updated, "mappers_added": mappers_added,
                    "mappers_updated": mappers_updated, "realm_default_added": !is_default,
                    "changed": changed }),
        ))
    }

    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let t = self.target()?;
        let admin = t.admin(ctx).await?;
        t.require_realm(&admin).await?;
        let (scope, created, updated) = Self::ensure_scope(&admin, &t.realm).await?;
        let id = scope_id(&admin, &scope)?;

        let existing = admin.client_scope_mappers(&t.realm, &id).await?;
        let (mut mappers_added, mut mappers_updated) = (Vec::new(), Vec::new());
        for want in wanted_mappers() {
            match existing.iter().find(|m| m.name == want.name) {
                None => {
                    match admin.create_client_scope_mapper(&t.realm, &id, &want).await {
                        Ok(()) => {}
                        Err(e) if e.is_conflict() => continue,
                        Err(e) => return Err(e.into()),
                    }
                    mappers_added.push(want.name.clone());
                }
                Some(have) if have.protocol_mapper != want.protocol_mapper => {
                    // A mapper of another type under our name: replace it.
                    let mapper_id = mapper_id(&admin, have)?;
                    admin
                        .delete_client_scope_mapper(&t.realm, &id, &mapper_id)
                        .await?;
                    admin
                        .create_client_scope_mapper(&t.realm, &id, &want)
                        .await?;
                    mappers_updated.push(want.name.clone());
                }
                Some(have) => {
                    let mut merged = have.clone();
                    if merge_config(&mut merged.config, &want.config) {
                        let mapper_id = mapper_id(&admin, have)?;
                        admin
                            .update_client_scope_mapper(&t.realm, &id, &mapper_id, &merged)
                            .await?;
                        mappers_updated.push(want.name.clone());
                    }
                }
            }
        }

        let defaults = admin.default_default_client_scopes(&t.realm).await?;
        let realm_default_added = !defaults.iter().any(|s| s.id.as_deref() == Some(&id));
        if realm_default_added {
            admin
                .add_default_default_client_scope(&t.realm, &id)
                .await?;
        }
        let changed = created
            || updated
            || realm_default_added
            || !mappers_added.is_empty()
            || !mappers_updated.is_empty();
        if changed {
            tracing::info!(instance = %t.upper, realm = %t.realm, created, updated,
                ?mappers_added, ?mappers_updated, realm_default_added,
                "ensured client scope {SCOPE_NAME}");
        }
        Ok(json!({
            "instance": t.upper,
            "realm": t.realm,
            "scope": SCOPE_NAME,
            "id": id,
            "created": created,
            "updated": updated,
            "mappers_added": mappers_added,
            "mappers_updated": mappers_updated,
            "realm_default_added": realm_default_added,
            "changed": changed,
        }))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, output: &Value) -> Result<(), PhaseError> {
        let created = flag(output, "created");
        if !created && !flag(output, "realm_default_added") {
            return Ok(());
        }
        let t = self.target()?;
        let admin = t.admin(ctx).await?;
        if admin.realm(&t.realm).await?.is_none() {
            return Ok(());
        }
        let Some(scope) = admin.client_scope_by_name(&t.realm, SCOPE_NAME).await? else {
            return Ok(());
        };
        let id = scope_id(&admin, &scope)?;
        admin
            .remove_default_default_client_scope(&t.realm, &id)
            .await?;
        if created {
            admin.delete_client_scope(&t.realm, &id).await?;
            tracing::info!(instance = %t.upper, realm = %t.realm,
                "deleted client scope {SCOPE_NAME} (compensation)");
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
    fn mappers_emit_the_four_claims_and_only_acp_coi_is_multivalued() {
        let mappers = wanted_mappers();
        let names: Vec<_> = mappers.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, DIVE_ATTRIBUTES);
        for m in &mappers {
            assert_eq!(m.config["claim.name"], m.name);
            assert_eq!(m.config["user.attribute"], m.name);
            assert_eq!(m.config["id.token.claim"], "true");
            assert_eq!(
                m.config["multivalued"],
                if m.name == "acpCOI" { "true" } else { "false" }
            );
        }
    }

    #[test]
    fn config_merge_keeps_other_keys() {
        let mut have = BTreeMap::from([
            ("claim.name".to_string(), "other".to_string()),
            ("lightweight.claim".to_string(), "false".to_string()),
        ]);
        let want = wanted_mappers().remove(0).config;
        assert!(merge_config(&mut have, &want));
        assert_eq!(have["claim.name"], "uniqueID");
        assert_eq!(have["lightweight.claim"], "false");
        assert!(!merge_config(&mut have, &want));
    }
}
