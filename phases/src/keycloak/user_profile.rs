//! `keycloak.user-profile`: declares the four DIVE attributes in the realm's user profile.
//! Keycloak 24+ silently drops user attributes the profile does not declare, so without this
//! phase the users' `clearance` and friends would vanish and never reach a token.
//!
//! ```yaml
//! - id: profile
//!   type: keycloak.user-profile
//!   after: [realm]
//!   instance: FRA
//!   url: "${phases.keycloak.output.keycloak_url}"
//! ```
//! Declared: `uniqueID`, `clearance` (validator `options`: UNCLASSIFIED, RESTRICTED,
//! CONFIDENTIAL, SECRET, TOP_SECRET), `countryOfAffiliation`, `acpCOI` (multivalued); viewable by
//! admins and the user, editable by admins only (so the admin API can set them and users
//! cannot raise their own clearance). Output `{instance, realm, attributes, added, updated,
//! changed}`.
//!
//! Idempotency: the profile is read and *merged*: attributes dive does not declare (Keycloak's
//! own `username`, `email`, `firstName`, `lastName`, anything an operator added), groups and
//! policies are kept as they are; a DIVE attribute that is missing is added, one that differs
//! in what dive declares (display name, permissions, `multivalued`, dive's validators) is
//! corrected, keeping other settings of it. The profile is written only when something
//! changed, so a second run reports `changed: false`.
//!
//! Compensation: none, on purpose. Removing the declarations would make Keycloak silently drop
//! these attributes from every user that has them (data loss for users that existed before, or
//! were created by another run), which is worse than leaving four declared attributes behind.
//! Deleting a realm this workflow created (`keycloak.realm`'s compensation) removes them anyway.

use super::common::{Live, Target, instance_code, realm_name};
use dive_engine::{
    Action, Change, Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag,
};
use dive_keycloak::DIVE_ATTRIBUTES;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

/// The clearance levels, lowest first.
pub const CLEARANCES: [&str; 5] = [
    "UNCLASSIFIED",
    "RESTRICTED",
    "CONFIDENTIAL",
    "SECRET",
    "TOP_SECRET",
];

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeycloakUserProfile {
    #[serde(deserialize_with = "instance_code")]
    pub instance: String,
    pub url: String,
    #[serde(default, deserialize_with = "realm_name")]
    pub realm: Option<String>,
}

/// The declarations dive wants, in [`DIVE_ATTRIBUTES`] order.
pub(crate) fn wanted_attributes() -> Vec<Value> {
    let permissions = json!({ "view": ["admin", "user"], "edit": ["admin"] });
    DIVE_ATTRIBUTES
        .iter()
        .map(|&name| {
            let mut a = json!({
                "name": name,
                "displayName": match name {
                    "uniqueID" => "Unique ID",
                    "clearance" => "Clearance",
                    "countryOfAffiliation" => "Country of affiliation",
                    _ => "Communities of interest",
                },
                "permissions": permissions,
                "multivalued": name == "acpCOI",
            });
            if name == "clearance" {
                a["validations"] = json!({ "options": { "options": CLEARANCES } });
            }
            a
        })
        .collect()
}

fn string_set(v: Option<&Value>) -> BTreeSet<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Brings one existing declaration in line with `want`, touching only what dive declares.
/// Returns whether anything changed.
fn merge_attribute(have: &mut Map<String, Value>, want: &Value) -> bool {
    let mut changed = false;
    if have.get("displayName") != want.get("displayName") {
        have.insert("displayName".into(), want["displayName"].clone());
        changed = true;
    }
    let same_permissions = ["view", "edit"].iter().all(|k| {
        string_set(have.get("permissions").and_then(|p| p.get(k)))
            == string_set(want["permissions"].get(k))
    });
    if !same_permissions {
        have.insert("permissions".into(), want["permissions"].clone());
        changed = true;
    }
    let multivalued = have
        .get("multivalued")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if Some(multivalued) != want["multivalued"].as_bool() {
        have.insert("multivalued".into(), want["multivalued"].clone());
        changed = true;
    }
    if let Some(validations) = want.get("validations").and_then(Value::as_object) {
        let entry = have
            .entry("validations")
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let have_validations = entry.as_object_mut().expect("made an object above");
        for (validator, config) in validations {
            if have_validations.get(validator) != Some(config) {
                have_validations.insert(validator.clone(), config.clone());
                changed = true;
            }
        }
    }
    changed
}

/// Merges the DIVE declarations into a `UPConfig`; returns the names added and updated.
/// Nothing else in `config` is touched.
pub(crate) fn merge_profile(config: &mut Value) -> Result<(Vec<String>, Vec<String>), String> {
    let obj = config
        .as_object_mut()
        .ok_or("the user profile is not a JSON object")?;
    let attributes = obj
        .entry("attributes")
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or("the user profile's `attributes` is not a list")?;
    let (mut added, mut updated) = (Vec::new(), Vec::new());
    for want in wanted_attributes() {
        let name = want["name"].as_str().expect("wanted names are strings");
        match attributes
            .iter_mut()
            .filter_map(Value::as_object_mut)
            .find(|a| a.get("name").and_then(Value::as_str) == Some(name))
        {
            Some(have) => {
                if merge_attribute(have, &want) {
                    updated.push(name.to_string());
                }
            }
            None => {
                attributes.push(want.clone());
                added.push(name.to_string());
            }
        }
    }
    Ok((added, updated))
}

/// What merging the DIVE declarations into the user profile `before` of `realm` on instance
/// `code` would change: each attribute added or corrected, with old and new values; and the
/// names added and updated. Shared by the plan and `federation drift`.
pub(crate) struct ProfileChanges {
    pub changes: Vec<Change>,
    pub added: Vec<String>,
    pub updated: Vec<String>,
}

pub(crate) fn profile_changes(
    code: &str,
    realm: &str,
    before: &Value,
) -> Result<ProfileChanges, String> {
    let mut after = before.clone();
    let (added, updated) = merge_profile(&mut after)?;
    let attribute = |config: &Value, name: &str| {
        config["attributes"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["name"] == name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let object = |name: &str| format!("user-profile attribute {name} in realm {realm}");
    let mut changes = Vec::new();
    for name in &added {
        changes.push(
            Change::new(Some(code), object(name), Action::Create)
                .diff(&Value::Null, &attribute(&after, name)),
        );
    }
    for name in &updated {
        changes.push(
            Change::new(Some(code), object(name), Action::Update)
                .diff(&attribute(before, name), &attribute(&after, name)),
        );
    }
    Ok(ProfileChanges {
        changes,
        added,
        updated,
    })
}

#[typetag::serde(name = "keycloak.user-profile")]
#[async_trait]
impl Phase for KeycloakUserProfile {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let t = Target::new(&self.instance, &self.url, self.realm.as_deref())?;
        let admin = t.admin(ctx).await?;
        t.require_realm(&admin).await?;
        let mut config = admin.user_profile(&t.realm).await?;
        let (added, updated) = merge_profile(&mut config)
            .map_err(|e| PhaseError::fatal(format!("{}: realm {}: {e}", admin.name(), t.realm)))?;
        let changed = !added.is_empty() || !updated.is_empty();
        if changed {
            admin.update_user_profile(&t.realm, &config).await?;
            tracing::info!(instance = %t.upper, realm = %t.realm, ?added, ?updated,
                "declared DIVE attributes in the user profile");
        }
        Ok(json!({
            "instance": t.upper,
            "realm": t.realm,
            "attributes": DIVE_ATTRIBUTES,
            "added": added,
            "updated": updated,
            "changed": changed,
        }))
    }

    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let (t, live) = Target::live(&self.instance, &self.url, self.realm.as_deref(), ctx).await?;
        let before = match live {
            Live::Unknown(c) => return Ok(PhasePlan::changes(vec![c], Value::Null)),
            Live::New => json!({ "attributes": [] }),
            Live::Admin(admin) => admin.user_profile(&t.realm).await?,
        };
        let ProfileChanges {
            changes,
            added,
            updated,
        } = profile_changes(&t.upper, &t.realm, &before).map_err(|e| {
            PhaseError::fatal(format!("keycloak {}: realm {}: {e}", t.upper, t.realm))
        })?;
        let changed = !changes.is_empty();
        Ok(PhasePlan::changes(
            changes,
            json!({ "instance": t.upper, "realm": t.realm, "attributes": DIVE_ATTRIBUTES,
                    "added": added, "updated": updated, "changed": changed }),
        ))
    }

    fn breaker_key(&self) -> Option<String> {
        Target::breaker_key(&self.instance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin() -> Value {
        json!({
            "unmanagedAttributePolicy": "ADMIN_VIEW",
            "attributes": [
                {"name": "username", "displayName": "${username}",
                 "permissions": {"view": ["admin", "user"], "edit": ["admin", "user"]}},
                {"name": "email", "displayName": "${email}"},
                {"name": "clearance", "displayName": "Clearance",
                 "annotations": {"inputType": "select"},
                 "validations": {"options": {"options": ["SECRET"]}, "length": {"max": 20}},
                 "permissions": {"view": ["user", "admin"], "edit": ["admin"]}},
            ],
            "groups": [{"name": "user-metadata"}],
        })
    }

    #[test]
    fn merge_adds_missing_fixes_ours_and_keeps_the_rest() {
        let mut config = builtin();
        let (added, updated) = merge_profile(&mut config).unwrap();
        assert_eq!(added, ["uniqueID", "countryOfAffiliation", "acpCOI"]);
        assert_eq!(updated, ["clearance"]);
        let attrs = config["attributes"].as_array().unwrap();
        let names: Vec<_> = attrs.iter().map(|a| a["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "username",
                "email",
                "clearance",
                "uniqueID",
                "countryOfAffiliation",
                "acpCOI"
            ]
        );
        assert_eq!(config["unmanagedAttributePolicy"], "ADMIN_VIEW");
        assert_eq!(config["groups"][0]["name"], "user-metadata");
        let clearance = &attrs[2];
        assert_eq!(clearance["annotations"]["inputType"], "select", "kept");
        assert_eq!(clearance["validations"]["length"]["max"], 20, "kept");
        assert_eq!(
            clearance["validations"]["options"]["options"],
            json!(CLEARANCES)
        );
        assert_eq!(attrs[5]["multivalued"], true);
        assert_eq!(
            attrs[1],
            json!({"name": "email", "displayName": "${email}"})
        );

        // Merged once, nothing more to do.
        let before = config.clone();
        let (added, updated) = merge_profile(&mut config).unwrap();
        assert!(added.is_empty() && updated.is_empty());
        assert_eq!(config, before);
    }

    #[test]
    fn permission_order_and_absent_multivalued_are_not_differences() {
        let mut config = json!({ "attributes": wanted_attributes() });
        for a in config["attributes"].as_array_mut().unwrap() {
            a["permissions"]["view"] = json!(["user", "admin"]);
            if a["multivalued"] == false {
                a.as_object_mut().unwrap().remove("multivalued");
            }
        }
        let (added, updated) = merge_profile(&mut config).unwrap();
        assert!(added.is_empty() && updated.is_empty(), "{updated:?}");
    }

    #[test]
    fn a_malformed_profile_is_an_error() {
        assert!(merge_profile(&mut json!([])).is_err());
        assert!(merge_profile(&mut json!({"attributes": 3})).is_err());
    }
}
