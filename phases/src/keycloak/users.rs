//! `keycloak.users`: ensures the test users `testuser-<code>-1..4` (dummy data for login and
//! federation checks).
//!
//! ```yaml
//! - id: users
//!   type: keycloak.users
//!   after: [profile, client]
//!   instance: FRA
//!   url: "${phases.keycloak.output.keycloak_url}"
//! ```
//! User N has clearance UNCLASSIFIED, CONFIDENTIAL, SECRET, TOP_SECRET (N = 1..4), `uniqueID` =
//! username, `countryOfAffiliation` = CODE, `acpCOI` = NATO (plus FVEY for USA, GBR, CAN, AUS,
//! NZL), email `testuser-<code>-N@<code>.dive.test`, name `Test` / `User <CODE> N`, enabled,
//! email verified. Each password is the secret `<code>/users/<username>` (created with 24
//! characters when missing) and is set with a non-temporary reset. Needs the user profile
//! (`keycloak.user-profile`) first: the phase reads every user back and fails, naming the
//! attributes, if Keycloak did not keep them. Output `{instance, realm, usernames, users:
//! [{username, created, updated, password_set}], created, updated, password_set, unchanged,
//! changed}`, never a password.
//!
//! Idempotency: a missing user is created; an existing one is read and written back (whole
//! representation, other attributes kept) only when a field above differs. The password is
//! set for a new user, when its secret was just created, or when a password grant (realm client
//! `admin-cli`) with the stored password fails; otherwise it is left alone. A second run
//! reports `changed: false`.
//!
//! Compensation: deletes the users this phase created (output `users[].created`); users that
//! were there before stay. The password secrets stay (secrets have no compensation; see the
//! secrets module), so a later run gives re-created users the same passwords.

use super::common::{Live, Target, instance_code, realm_name, to_json};
use crate::context::Services;
use crate::service::secret_value;
use dive_engine::{
    Action, Phase, PhaseContext, PhaseError, PhasePlan, SENSITIVE, async_trait, typetag,
};
use dive_error::Classify;
use dive_keycloak::DIVE_ATTRIBUTES;
use dive_keycloak::KeycloakAdmin;
use dive_keycloak::types::UserRep;
use dive_keycloak::{TestUser, test_users, user_password_secret};
use dive_secrets::Alphabet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use zeroize::Zeroizing;

/// Length of generated test user passwords.
pub const PASSWORD_LENGTH: usize = 24;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeycloakUsers {
    #[serde(deserialize_with = "instance_code")]
    pub instance: String,
    pub url: String,
    #[serde(default, deserialize_with = "realm_name")]
    pub realm: Option<String>,
}

/// Values compared as sets: Keycloak does not promise the order of multivalued attributes.
fn same_values(a: Option<&Vec<String>>, b: &[String]) -> bool {
    let a: BTreeSet<&String> = a.into_iter().flatten().collect();
    a == b.iter().collect()
}

/// Corrects what differs from `want` in `have`, keeping other attributes; returns whether
/// anything changed.
fn merge_user(have: &mut UserRep, want: &TestUser) -> bool {
    let mut changed = false;
    let mut set = |field: &mut Option<String>, value: &str| {
        if field.as_deref() != Some(value) {
            *field = Some(value.to_string());
            changed = true;
        }
    };
    set(&mut have.email, &want.email);
    set(&mut have.first_name, &want.first_name);
    set(&mut have.last_name, &want.last_name);
    for (flag, name) in [
        (&mut have.enabled, "enabled"),
        (&mut have.email_verified, "emailVerified"),
    ] {
        if *flag != Some(true) {
            tracing::debug!(user = %want.username, field = name, "correcting");
            *flag = Some(true);
            changed = true;
        }
    }
    let attributes = have.attributes.get_or_insert_with(BTreeMap::new);
    for (k, v) in &want.attributes {
        if !same_values(attributes.get(k), v) {
            attributes.insert(k.clone(), v.clone());
            changed = true;
        }
    }
    changed
}

fn new_user(want: &TestUser) -> UserRep {
    UserRep {
        username: want.username.clone(),
        email: Some(want.email.clone()),
        first_name: Some(want.first_name.clone()),
        last_name: Some(want.last_name.clone()),
        enabled: Some(true),
        email_verified: Some(true),
        attributes: Some(want.attributes.clone()),
        ..Default::default()
    }
}

/// What ensuring one user did.
#[derive(Debug, Serialize)]
struct UserOutcome {
    username: String,
    created: bool,
    updated: bool,
    password_set: bool,
}

impl KeycloakUsers {
    fn target(&self) -> Result<Target, PhaseError> {
        Target::new(&self.instance, &self.url, self.realm.as_deref())
    }

    async fn ensure_user(
        admin: &KeycloakAdmin,
        t: &Target,
        want: &TestUser,
        password: &str,
        secret_created: bool,
    ) -> Result<UserOutcome, PhaseError> {
        let realm = &t.realm;
        let (id, created, updated) = match admin.user_by_username(realm, &want.username).await? {
            Some(mut have) => {
                let id = have.id.clone().ok_or_else(|| {
                    PhaseError::fatal(format!(
                        "{}: user {} has no id",
                        admin.name(),
                        want.username
                    ))
                })?;
                let updated = merge_user(&mut have, want);
                if updated {
                    admin.update_user(realm, &id, &have).await?;
                }
                (id, false, updated)
            }
            None => match admin.create_user(realm, &new_user(want)).await {
                Ok(id) => (id, true, false),
                // Created concurrently: ensure it like an existing one next time round.
                Err(e) if e.is_conflict() => {
                    return Err(PhaseError::retryable(e.to_string()));
                }
                Err(e) => return Err(e.into()),
            },
        };
        if created || updated {
            Self::check_kept(admin, realm, &id, want).await?;
        }
        let password_set = created
            || secret_created
            || !admin
                .check_password(realm, &want.username, password)
                .await?;
        if password_set {
            admin.reset_password(realm, &id, password).await?;
        }
        Ok(UserOutcome {
            username: want.username.clone(),
            created,
            updated,
            password_set,
        })
    }

    /// Reads the user back: Keycloak drops undeclared attributes without an error.
    async fn check_kept(
        admin: &KeycloakAdmin,
        realm: &str,
        id: &str,
        want: &TestUser,
    ) -> Result<(), PhaseError> {
        let stored = admin.user(realm, id).await?.ok_or_else(|| {
            PhaseError::retryable(format!(
                "{}: user {} vanished after it was written",
                admin.name(),
                want.username
            ))
        })?;
        let stored_attributes = stored.attributes.unwrap_or_default();
        let dropped: Vec<&str> = DIVE_ATTRIBUTES
            .iter()
            .copied()
            .filter(|a| !same_values(stored_attributes.get(*a), &want.attributes[*a]))
            .collect();
        if dropped.is_empty() {
            Ok(())
        } else {
            Err(PhaseError::fatal(format!(
                "{}: realm {realm} did not keep attribute(s) {} of user {}; declare them in the \
                 user profile first (keycloak.user-profile)",
                admin.name(),
                dropped.join(", "),
                want.username
            )))
        }
    }
}

#[typetag::serde(name = "keycloak.users")]
#[async_trait]
impl Phase for KeycloakUsers {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let t = self.target()?;
        let store = Services::of(ctx)?.secrets();
        let admin = t.admin(ctx).await?;
        t.require_realm(&admin).await?;
        let mut outcomes = Vec::new();
        for want in test_users(&t.lower) {
            let secret = user_password_secret(&t.lower, &want.username);
            let (_, secret_created) = store
                .ensure(&secret, PASSWORD_LENGTH, Alphabet::Alphanumeric)
                .await
                .map_err(|e| {
                    if e.is_retryable() {
                        PhaseError::retryable(e.to_string())
                    } else {
                        PhaseError::fatal(e.to_string())
                    }
                })?;
            let password = Zeroizing::new(secret_value(store, &secret).await?);
            outcomes.push(Self::ensure_user(&admin, &t, &want, &password, secret_created).await?);
        }
        let count = |f: fn(&UserOutcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
        let created = count(|o| o.created);
        let updated = count(|o| o.updated);
        let password_set = count(|o| o.password_set);
        let unchanged = count(|o| !o.created && !o.updated && !o.password_set);
        let changed = unchanged < outcomes.len();
        if changed {
            tracing::info!(instance = %t.upper, realm = %t.realm, created, updated, password_set,
                "ensured test users");
        }
        Ok(json!({
            "instance": t.upper,
            "realm": t.realm,
            "usernames": outcomes.iter().map(|o| o.username.as_str()).collect::<Vec<_>>(),
            "users": outcomes,
            "created": created,
            "updated": updated,
            "password_set": password_set,
            "unchanged": unchanged,
            "changed": changed,
        }))
    }

    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let (t, live) = Target::live(&self.instance, &self.url, self.realm.as_deref(), ctx).await?;
        let store = Services::of(ctx)?.secrets();
        let admin = match live {
            Live::Unknown(c) => return Ok(PhasePlan::changes(vec![c], Value::Null)),
            Live::New => None,
            Live::Admin(admin) => Some(admin),
        };
        let mut changes = Vec::new();
        let mut users = Vec::new();
        for want in test_users(&t.lower) {
            let secret = user_password_secret(&t.lower, &want.username);
            let password = store.get(&secret).await.map_err(|e| {
                PhaseError::fatal(e.to_string()).context(format!("secret {secret}"))
            })?;
            if password.is_none() {
                changes.push(
                    crate::secret_ensure::secret_change(&secret, Action::Create).field(
                        "value",
                        Value::Null,
                        SENSITIVE,
                    ),
                );
            }
            let user = format!("user {}", want.username);
            let have = match &admin {
                Some(admin) => admin.user_by_username(&t.realm, &want.username).await?,
                None => None,
            };
            let (created, updated) = match &have {
                None => {
                    changes.push(
                        t.change(&user, Action::Create)
                            .diff(&Value::Null, &to_json(&new_user(&want))),
                    );
                    (true, false)
                }
                Some(have) => {
                    let mut merged = have.clone();
                    let updated = merge_user(&mut merged, &want);
                    if updated {
                        changes.push(
                            t.change(&user, Action::Update)
                                .diff(&to_json(have), &to_json(&merged)),
                        );
                    }
                    (false, updated)
                }
            };
            let password_set = match (&admin, &password, created) {
                (Some(admin), Some((password, _)), false) => {
                    !admin
                        .check_password(&t.realm, &want.username, password.expose())
                        .await?
                }
                _ => true,
            };
            if password_set && !created {
                changes.push(
                    t.change(
                        format!("password of user {}", want.username),
                        Action::Update,
                    )
                    .field("password", SENSITIVE, SENSITIVE),
                );
            }
            users.push(json!({ "username": want.username, "created": created,
                               "updated": updated, "password_set": password_set }));
        }
        let count = |k: &str| users.iter().filter(|u| u[k] == true).count();
        let unchanged = users
            .iter()
            .filter(|u| {
                u["created"] == false && u["updated"] == false && u["password_set"] == false
            })
            .count();
        let output = json!({
            "instance": t.upper, "realm": t.realm,
            "usernames": users.iter().map(|u| u["username"].clone()).collect::<Vec<_>>(),
            "created": count("created"), "updated": count("updated"),
            "password_set": count("password_set"), "unchanged": unchanged,
            "changed": unchanged < users.len(), "users": users,
        });
        Ok(PhasePlan::changes(changes, output))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, output: &Value) -> Result<(), PhaseError> {
        let created: Vec<&str> = output
            .get("users")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|u| u.get("created").and_then(Value::as_bool) == Some(true))
            .filter_map(|u| u.get("username").and_then(Value::as_str))
            .collect();
        if created.is_empty() {
            return Ok(());
        }
        let t = self.target()?;
        let admin = t.admin(ctx).await?;
        if admin.realm(&t.realm).await?.is_none() {
            return Ok(());
        }
        for username in created {
            if let Some(id) = admin
                .user_by_username(&t.realm, username)
                .await?
                .and_then(|u| u.id)
            {
                admin.delete_user(&t.realm, &id).await?;
                tracing::info!(instance = %t.upper, realm = %t.realm, user = username,
                    "deleted test user (compensation)");
            }
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
    fn merge_ignores_attribute_order_and_keeps_other_attributes() {
        let want = &test_users("usa")[0];
        let mut have = new_user(want);
        let attrs = have.attributes.as_mut().unwrap();
        attrs.insert("acpCOI".into(), vec!["FVEY".into(), "NATO".into()]);
        attrs.insert("department".into(), vec!["J6".into()]);
        assert!(!merge_user(&mut have, want));
        have.attributes
            .as_mut()
            .unwrap()
            .insert("clearance".into(), vec!["SECRET".into()]);
        have.email_verified = Some(false);
        assert!(merge_user(&mut have, want));
        let attrs = have.attributes.as_ref().unwrap();
        assert_eq!(attrs["clearance"], ["UNCLASSIFIED"]);
        assert_eq!(attrs["department"], ["J6"]);
        assert_eq!(have.email_verified, Some(true));
    }
}
