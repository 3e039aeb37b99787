//! Client-secret rotation (Keycloak's preview feature `client-secret-rotation`, which dive
//! builds into its distribution): a client policy whose `secret-rotation` executor covers a
//! client makes `POST …/client-secret` keep the previous secret as the client's *rotated*
//! secret, which the token endpoint accepts until it expires. That is how a partner that still
//! holds the previous secret keeps logging users in while the new one is rolled out.
//!
//! Two traps in Keycloak's implementation shape this module:
//! - Once the policy covers a client, its primary secret gets an expiry, and an expired primary
//!   refuses the client altogether. dive rotates explicitly, so the expiry is long
//!   ([`PRIMARY_SECRET_LIFETIME`]).
//! - A `PUT` of a client that no policy covers wipes its rotated secret. The policy therefore
//!   covers every client tagged with [`ROTATION_ATTRIBUTE`], and dive tags its federation
//!   clients when it creates them, so a reconcile (`federation link`) during a rotation keeps
//!   the rotated secret.
//!
//! A `PUT` with a chosen `secret` while the policy covers the client replaces only the primary
//! (the rotated secret and the expiry stay), which is how dive sets a value it generated.

use crate::admin::{KeycloakAdmin, KeycloakError, enc, realm_path};
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// The client attribute (value `true`) that puts a client under dive's rotation policy.
pub const ROTATION_ATTRIBUTE: &str = "dive.secret.rotation";
/// Names of dive's client profile and policy in a realm.
pub const ROTATION_PROFILE: &str = "dive-secret-rotation";
pub const ROTATION_POLICY: &str = "dive-secret-rotation";
/// Lifetime Keycloak gives a covered client's primary secret: five years (Keycloak computes
/// expiries in 32-bit seconds since 1970, so it must stay well short of 2038).
pub const PRIMARY_SECRET_LIFETIME: u32 = 5 * 365 * 24 * 3600;
/// How long the previous secret stays accepted unless dive drops it sooner (one day: dive
/// drops it as soon as the partner has the new one and a login proved it).
pub const ROTATED_SECRET_LIFETIME: u32 = 24 * 3600;
// Keycloak adds these to 32-bit seconds since 1970 (about 1.8e9 today): stay far from 2^31.
const _: () = assert!(
    PRIMARY_SECRET_LIFETIME < 300_000_000 && ROTATED_SECRET_LIFETIME <= PRIMARY_SECRET_LIFETIME
);

fn profiles_path(realm: &str) -> String {
    realm_path(realm, "/client-policies/profiles")
}

fn policies_path(realm: &str) -> String {
    realm_path(realm, "/client-policies/policies")
}

fn secret_path(realm: &str, id: &str) -> String {
    realm_path(realm, &format!("/clients/{}/client-secret", enc(id)))
}

/// The profile dive wants: one `secret-rotation` executor.
fn wanted_profile() -> Value {
    json!({
        "name": ROTATION_PROFILE,
        "description": "dive: keep a client's previous secret accepted while it is rotated",
        "executors": [{
            "executor": "secret-rotation",
            "configuration": {
                "expiration-period": PRIMARY_SECRET_LIFETIME,
                "rotated-expiration-period": ROTATED_SECRET_LIFETIME,
                "remaining-rotation-period": ROTATED_SECRET_LIFETIME,
            }
        }]
    })
}

/// The policy dive wants: its profile for every client tagged [`ROTATION_ATTRIBUTE`].
fn wanted_policy() -> Value {
    let attributes = json!([{ "key": ROTATION_ATTRIBUTE, "value": "true" }]).to_string();
    json!({
        "name": ROTATION_POLICY,
        "description": "dive: clients whose secrets dive rotates",
        "enabled": true,
        "profiles": [ROTATION_PROFILE],
        "conditions": [{
            "condition": "client-attributes",
            "configuration": { "attributes": attributes }
        }]
    })
}

/// Puts `want` into the list `key` of `doc` in place of the entry of the same name; whether
/// anything changed.
fn upsert_named(doc: &mut Value, key: &str, want: Value) -> bool {
    if !doc[key].is_array() {
        doc[key] = json!([]);
    }
    let list = doc[key]
        .as_array_mut()
        .expect("an array was just put there");
    let name = want["name"].clone();
    match list.iter_mut().find(|p| p["name"] == name) {
        Some(have) if *have == want => false,
        Some(have) => {
            *have = want;
            true
        }
        None => {
            list.push(want);
            true
        }
    }
}

impl KeycloakAdmin {
    /// Makes sure `realm` has dive's rotation profile and policy, keeping any other profile or
    /// policy (a `PUT` replaces the realm's whole list). Returns whether it changed anything.
    /// Needs the `client-secret-rotation` feature: without it Keycloak refuses the executor.
    pub async fn ensure_rotation_policy(&self, realm: &str) -> Result<bool, KeycloakError> {
        let mut profiles: Value = self.get(&profiles_path(realm)).await?;
        let profile_changed = upsert_named(&mut profiles, "profiles", wanted_profile());
        if profile_changed {
            profiles.as_object_mut().map(|o| o.remove("globalProfiles"));
            self.put(&profiles_path(realm), Some(&profiles)).await?;
        }
        let mut policies: Value = self.get(&policies_path(realm)).await?;
        let policy_changed = upsert_named(&mut policies, "policies", wanted_policy());
        if policy_changed {
            policies.as_object_mut().map(|o| o.remove("globalPolicies"));
            self.put(&policies_path(realm), Some(&policies)).await?;
        }
        Ok(profile_changed || policy_changed)
    }

    /// Whether [`KeycloakAdmin::ensure_rotation_policy`] would change anything. Only reads.
    pub async fn rotation_policy_differs(&self, realm: &str) -> Result<bool, KeycloakError> {
        let mut profiles: Value = self.get(&profiles_path(realm)).await?;
        let mut policies: Value = self.get(&policies_path(realm)).await?;
        Ok(upsert_named(&mut profiles, "profiles", wanted_profile())
            || upsert_named(&mut policies, "policies", wanted_policy()))
    }

    /// The primary secret of client `id` (compared, never shown).
    pub async fn client_secret(
        &self,
        realm: &str,
        id: &str,
    ) -> Result<Option<Zeroizing<String>>, KeycloakError> {
        let v: Value = self.get(&secret_path(realm, id)).await?;
        Ok(secret_value(&v))
    }

    /// The rotated (previous, still accepted) secret of client `id`, if it has one.
    pub async fn rotated_client_secret(
        &self,
        realm: &str,
        id: &str,
    ) -> Result<Option<Zeroizing<String>>, KeycloakError> {
        let path = format!("{}/rotated", secret_path(realm, id));
        let v: Option<Value> = self.get_opt(&path).await?;
        Ok(v.as_ref().and_then(secret_value))
    }

    /// Lets Keycloak generate a new primary secret for client `id`; under dive's rotation
    /// policy the current primary becomes the rotated secret. The new value is not returned:
    /// dive sets its own next ([`KeycloakAdmin::set_client_secret`]).
    pub async fn regenerate_client_secret(
        &self,
        realm: &str,
        id: &str,
    ) -> Result<(), KeycloakError> {
        self.post(&secret_path(realm, id), &json!({})).await?;
        Ok(())
    }

    /// Sets the primary secret of client `id` (and the given attributes; others are kept).
    pub async fn set_client_secret(
        &self,
        realm: &str,
        id: &str,
        client_id: &str,
        secret: &str,
        attributes: &[(&str, String)],
    ) -> Result<(), KeycloakError> {
        let attributes: serde_json::Map<String, Value> = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let body = json!({ "clientId": client_id, "secret": secret, "attributes": attributes });
        self.put(
            &realm_path(realm, &format!("/clients/{}", enc(id))),
            Some(&body),
        )
        .await
    }

    /// Drops the rotated secret of client `id`: from now on only the primary is accepted.
    pub async fn drop_rotated_client_secret(
        &self,
        realm: &str,
        id: &str,
    ) -> Result<(), KeycloakError> {
        self.delete(&format!("{}/rotated", secret_path(realm, id)))
            .await
            .map(|_| ())
    }
}

fn secret_value(v: &Value) -> Option<Zeroizing<String>> {
    v.get("value")
        .and_then(Value::as_str)
        .map(|s| Zeroizing::new(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsert_keeps_other_entries_and_reports_changes() {
        let mut doc = json!({ "profiles": [{ "name": "other", "executors": [] }] });
        assert!(upsert_named(&mut doc, "profiles", wanted_profile()));
        assert!(!upsert_named(&mut doc, "profiles", wanted_profile()));
        assert_eq!(doc["profiles"].as_array().unwrap().len(), 2);
        assert_eq!(doc["profiles"][0]["name"], "other");

        let mut empty = json!({});
        assert!(upsert_named(&mut empty, "policies", wanted_policy()));
        assert_eq!(empty["policies"][0]["enabled"], true);
        // The condition's attributes are a JSON string, as Keycloak expects.
        let attrs = empty["policies"][0]["conditions"][0]["configuration"]["attributes"]
            .as_str()
            .unwrap();
        assert!(attrs.contains(ROTATION_ATTRIBUTE));
    }
}
