//! `federation.client`: in realm `dive-<from>` of instance X (`from`), the confidential client
//! `federation-<to>` that instance P's identity provider `<from>-idp` uses.
//!
//! ```yaml
//! - id: client-usa-fra
//!   type: federation.client
//!   from: USA      # X: whose users log in elsewhere
//!   to: FRA        # P: where they log in
//! ```
//! The client is confidential (client-secret authentication), standard flow only (no implicit,
//! direct access grants or service account), PKCE S256 required, redirect URI
//! `<P front url>/realms/dive-<to>/broker/<from>-idp/endpoint`, and has `dive-attributes` among
//! its default client scopes (added with its own call: `defaultClientScopes` given on creation
//! would replace the realm's defaults). Its secret is the value of secret
//! `federation/<from>/<to>/client-secret` (ensured here: 32 alphanumeric characters); the
//! version Keycloak holds is recorded in the client attribute `dive.secret.version`, so that
//! drift can be found by comparing versions. The client carries `dive.secret.rotation=true`, and
//! the realm gets dive's client-secret-rotation policy that covers such clients (so a rotation
//! can keep the previous secret accepted, and a reconcile keeps it). Output `{from, to, realm, client_id, id, created,
//! updated, fixed, scope_added, secret, secret_version, secret_created, changed}` (never the
//! value).
//!
//! Idempotency: the secret is ensured (kept when it exists); a missing client is created; an
//! existing one is corrected (whole representation written back) when a setting, the redirect
//! URI or the secret differs (the secret is read back from Keycloak and compared with the
//! store's latest version); the default scope is added only when missing. A second run reports
//! `changed: false`.
//!
//! Compensation: deletes the client only if this run created it (its attribute
//! `dive.created.run`), and the secret only if this run created it (its version 1 carries the
//! origin `run:<id>`) — whichever attempt did, so a create that timed out but was applied still
//! goes; never a client or secret an earlier link put into use; it tolerates that either is
//! already gone.

use super::{
    CREATED_BY_KEY, SECRET_VERSION_KEY, admin, breaker, client_id, client_secret_name, code_field,
    enc, flag, realm_path, resolve,
};
use crate::context::{Services, origin};
use crate::keycloak::SCOPE_NAME;
use crate::keycloak::client::merge_client;
use crate::keycloak::to_json;
use dive_engine::{
    Action, Change, KNOWN_AFTER_APPLY, Phase, PhaseContext, PhaseError, PhasePlan, SENSITIVE,
    async_trait, typetag,
};
use dive_instances::InstanceRecord;
use dive_keycloak::types::ClientRep;
use dive_keycloak::{KeycloakAdmin, ROTATION_ATTRIBUTE};
use dive_secrets::Alphabet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Length of a generated client secret.
pub const SECRET_LENGTH: usize = 32;
const PKCE_ATTRIBUTE: &str = "pkce.code.challenge.method";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationClient {
    #[serde(deserialize_with = "code_field")]
    pub from: String,
    #[serde(deserialize_with = "code_field")]
    pub to: String,
}

/// The client as dive wants it (without the secret).
fn wanted(client_id: &str, to: &str, redirect: &str, secret_version: u32) -> ClientRep {
    ClientRep {
        client_id: client_id.to_string(),
        name: Some(format!("DIVE federation to {to}")),
        enabled: Some(true),
        protocol: Some("openid-connect".into()),
        public_client: Some(false),
        standard_flow_enabled: Some(true),
        implicit_flow_enabled: Some(false),
        direct_access_grants_enabled: Some(false),
        service_accounts_enabled: Some(false),
        redirect_uris: Some(vec![redirect.to_string()]),
        attributes: Some(BTreeMap::from([
            (PKCE_ATTRIBUTE.to_string(), "S256".to_string()),
            (SECRET_VERSION_KEY.to_string(), secret_version.to_string()),
            (ROTATION_ATTRIBUTE.to_string(), "true".to_string()),
        ])),
        extra: serde_json::Map::from_iter([(
            "clientAuthenticatorType".to_string(),
            json!("client-secret"),
        )]),
        ..Default::default()
    }
}

/// The secret Keycloak holds for client `id` (compared, never shown).
async fn keycloak_secret(
    admin: &KeycloakAdmin,
    realm: &str,
    id: &str,
) -> Result<Option<zeroize::Zeroizing<String>>, PhaseError> {
    let v: Value = admin
        .get(&realm_path(
            realm,
            &format!("/clients/{}/client-secret", enc(id)),
        ))
        .await?;
    Ok(v.get("value")
        .and_then(Value::as_str)
        .map(|s| zeroize::Zeroizing::new(s.to_string())))
}

/// How client `federation-<p>` in X's realm differs from what dive wants.
pub(crate) struct ClientDiff {
    pub id: String,
    /// The client as Keycloak has it, corrected towards what dive wants (secret left out).
    pub corrected: ClientRep,
    /// Settings that differ (Keycloak's field names).
    pub fixed: Vec<&'static str>,
    /// Keycloak holds another secret than the store's latest version.
    pub secret_differs: bool,
    /// `dive-attributes` is not among the client's default scopes.
    pub scope_missing: bool,
}

/// Where X's client sends a browser back to: P's broker endpoint for `<x>-idp`.
pub(crate) fn wanted_for(x: &InstanceRecord, p: &InstanceRecord, secret_version: u32) -> ClientRep {
    let redirect = format!(
        "{}/realms/{}/broker/{}/endpoint",
        p.keycloak_url(),
        p.realm(),
        super::idp_alias(&x.code)
    );
    wanted(&client_id(&p.code), &p.code, &redirect, secret_version)
}

/// Compares client `want.client_id` in `realm` with `want`, the store's `secret` and the
/// default scope `scope_id`; `None` when the client does not exist. Only reads.
pub(crate) async fn diff_client(
    admin: &KeycloakAdmin,
    realm: &str,
    want: &ClientRep,
    secret: &str,
    scope_id: &str,
) -> Result<Option<ClientDiff>, PhaseError> {
    let Some(mut have) = admin.client_by_client_id(realm, &want.client_id).await? else {
        return Ok(None);
    };
    let id = have.id.clone().ok_or_else(|| {
        PhaseError::fatal(format!(
            "{}: client {} has no id",
            admin.name(),
            want.client_id
        ))
    })?;
    // The representation may carry the current secret; never write it back unasked.
    have.extra.remove("secret");
    let fixed = merge_client(&mut have, want);
    let current = keycloak_secret(admin, realm, &id).await?;
    let secret_differs = current.as_deref().map(String::as_str) != Some(secret);
    let scopes = admin.client_default_scopes(realm, &id).await?;
    let scope_missing = !scopes.iter().any(|s| s.id.as_deref() == Some(scope_id));
    Ok(Some(ClientDiff {
        id,
        corrected: have,
        fixed,
        secret_differs,
        scope_missing,
    }))
}

/// What ensuring client `federation-<p>` in X's realm would change, compared with
/// [`diff_client`] like `run` does: the secret generated when the store has none (`stored`:
/// its value and version), the client created or corrected (each setting's old and new value;
/// the secret only as differing), the default scope added. Shared by the plan and `federation
/// drift`, so the two never disagree. Only reads.
pub(crate) struct ClientChanges {
    pub changes: Vec<Change>,
    pub want: ClientRep,
    /// The client's id, `None` when it would be created.
    pub id: Option<String>,
    pub fixed: Vec<&'static str>,
    pub scope_added: bool,
    pub secret_version: u32,
}

pub(crate) async fn client_changes(
    admin: &KeycloakAdmin,
    x: &InstanceRecord,
    p: &InstanceRecord,
    stored: Option<(&str, u32)>,
) -> Result<ClientChanges, PhaseError> {
    let secret_name = client_secret_name(&x.code, &p.code);
    let mut changes = Vec::new();
    if stored.is_none() {
        changes.push(
            crate::secret_ensure::secret_change(&secret_name, Action::Create).field(
                "value",
                Value::Null,
                SENSITIVE,
            ),
        );
    }
    let (secret, secret_version) = stored.unwrap_or(("", 1));
    let realm = x.realm();
    let want = wanted_for(x, p, secret_version);
    let cid = want.client_id.clone();
    let change = |what: String, action| {
        Change::new(Some(&x.code), format!("{what} in realm {realm}"), action)
    };
    let scope_id = attributes_scope_id(admin, &realm)
        .await?
        .unwrap_or_default();
    let (id, fixed, scope_added) =
        match diff_client(admin, &realm, &want, secret, &scope_id).await? {
            None => {
                changes.push(
                    change(format!("client {cid}"), Action::Create)
                        .diff(&Value::Null, &to_json(&want))
                        .field("secret", Value::Null, SENSITIVE),
                );
                (None, Vec::new(), true)
            }
            Some(diff) => {
                let mut fixed = diff.fixed.clone();
                if diff.secret_differs {
                    fixed.push("secret");
                }
                if !fixed.is_empty() {
                    let mut have = admin
                        .client_by_client_id(&realm, &cid)
                        .await?
                        .unwrap_or_else(|| diff.corrected.clone());
                    have.extra.remove("secret");
                    let mut update = change(format!("client {cid}"), Action::Update)
                        .diff(&to_json(&have), &to_json(&diff.corrected));
                    if diff.secret_differs {
                        update = update
                            .field("secret", SENSITIVE, SENSITIVE)
                            .because(format!(
                                "its secret is not version {secret_version} of {secret_name} \
                             (changed outside dive)"
                            ));
                    }
                    changes.push(update);
                }
                (Some(diff.id), fixed, diff.scope_missing)
            }
        };
    if scope_added {
        changes.push(change(
            format!("default scope {SCOPE_NAME} of client {cid}"),
            Action::Create,
        ));
    }
    Ok(ClientChanges {
        changes,
        want,
        id,
        fixed,
        scope_added,
        secret_version,
    })
}

/// The id of client scope `dive-attributes` in `realm`, if it exists.
pub(crate) async fn attributes_scope_id(
    admin: &KeycloakAdmin,
    realm: &str,
) -> Result<Option<String>, PhaseError> {
    Ok(admin
        .client_scope_by_name(realm, SCOPE_NAME)
        .await?
        .and_then(|s| s.id))
}

#[typetag::serde(name = "federation.client")]
#[async_trait]
impl Phase for FederationClient {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let (x, p) = resolve(ctx, &self.from, &self.to).await?;
        let store = Services::of(ctx)?.secrets();
        let secret_name = client_secret_name(&x.code, &p.code);
        let (_, secret_created) = store
            .ensure_for(
                &secret_name,
                SECRET_LENGTH,
                Alphabet::Alphanumeric,
                Some(&origin(ctx)),
            )
            .await?;
        let (secret, secret_version) = store
            .get(&secret_name)
            .await?
            .ok_or_else(|| PhaseError::retryable(format!("secret `{secret_name}` vanished")))?;

        let admin = admin(ctx, &x).await?;
        let realm = x.realm();
        if admin.realm(&realm).await?.is_none() {
            return Err(PhaseError::fatal(format!(
                "{}: realm `{realm}` does not exist (deploy {} again)",
                admin.name(),
                x.code
            )));
        }
        let scope_id = attributes_scope_id(&admin, &realm).await?.ok_or_else(|| {
            PhaseError::fatal(format!(
                "{}: client scope {SCOPE_NAME} does not exist in realm {realm} (deploy {} again)",
                admin.name(),
                x.code
            ))
        })?;
        let want = wanted_for(&x, &p, secret_version);
        let cid = want.client_id.clone();
        let redirect = want.redirect_uris.clone().unwrap_or_default().join(" ");

        // Before the client: a client the rotation policy covers keeps its rotated secret
        // through the `PUT` below (see dive_keycloak's rotation module).
        let policy_added = admin.ensure_rotation_policy(&realm).await?;
        let mut created = false;
        if admin.client_by_client_id(&realm, &cid).await?.is_none() {
            let mut rep = want.clone();
            rep.extra
                .insert("secret".into(), json!(secret.expose().to_string()));
            rep.attributes
                .get_or_insert_with(BTreeMap::new)
                .insert(CREATED_BY_KEY.into(), ctx.run_id.to_string());
            match admin.create_client(&realm, &rep).await {
                Ok(_) => created = true,
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let diff = diff_client(&admin, &realm, &want, secret.expose(), &scope_id)
            .await?
            .ok_or_else(|| {
                PhaseError::retryable(format!(
                    "{}: client {cid} is not listed after creating it",
                    admin.name()
                ))
            })?;
        let id = diff.id.clone();
        let mut fixed = diff.fixed.clone();
        let mut have = diff.corrected;
        if diff.secret_differs {
            have.extra
                .insert("secret".into(), json!(secret.expose().to_string()));
            fixed.push("secret");
        }
        if !fixed.is_empty() {
            admin.update_client(&realm, &id, &have).await?;
        }
        let scope_added = diff.scope_missing;
        if scope_added {
            admin
                .add_client_default_scope(&realm, &id, &scope_id)
                .await?;
        }
        let updated = !created && !fixed.is_empty();
        let changed = created || updated || scope_added || secret_created || policy_added;
        if changed {
            tracing::info!(from = %x.code, to = %p.code, realm = %realm, client = %cid,
                created, ?fixed, scope_added, secret_created, "ensured federation client");
        }
        Ok(json!({
            "from": x.code,
            "to": p.code,
            "realm": realm,
            "client_id": cid,
            "id": id,
            "redirect_uri": redirect,
            "created": created,
            "updated": updated,
            "fixed": if created { Vec::new() } else { fixed },
            "scope_added": scope_added,
            "secret": secret_name,
            "secret_version": secret_version,
            "secret_created": secret_created,
            "changed": changed,
        }))
    }

    /// What `run` would do ([`client_changes`]), and the rotation policy it would install.
    /// Only reads.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let (x, p) = resolve(ctx, &self.from, &self.to).await?;
        let store = Services::of(ctx)?.secrets();
        let secret_name = client_secret_name(&x.code, &p.code);
        let stored = store.get(&secret_name).await?;
        let realm = x.realm();
        let admin = match admin(ctx, &x).await {
            Ok(admin) => admin,
            Err(e) => {
                let change = Change::new(
                    Some(&x.code),
                    format!("client {} in realm {realm}", client_id(&p.code)),
                    Action::KnownAfterApply,
                )
                .because(format!("Keycloak cannot be read now: {e}"));
                return Ok(PhasePlan::changes(vec![change], Value::Null));
            }
        };
        let stored = stored.as_ref().map(|(s, v)| (s.expose(), *v));
        let planned = client_changes(&admin, &x, &p, stored).await?;
        let mut changes = planned.changes;
        if admin.rotation_policy_differs(&realm).await? {
            changes.push(Change::new(
                Some(&x.code),
                format!("client secret rotation policy in realm {realm}"),
                Action::Update,
            ));
        }
        let changed = !changes.is_empty();
        let created = planned.id.is_none();
        Ok(PhasePlan::changes(
            changes,
            json!({
                "from": x.code, "to": p.code, "realm": realm,
                "client_id": planned.want.client_id,
                "id": planned.id.map_or(Value::from(KNOWN_AFTER_APPLY), Value::from),
                "redirect_uri": planned.want.redirect_uris.clone().unwrap_or_default().join(" "),
                "created": created, "updated": !created && !planned.fixed.is_empty(),
                "fixed": planned.fixed, "scope_added": planned.scope_added,
                "secret": secret_name, "secret_version": planned.secret_version,
                "secret_created": stored.is_none(), "changed": changed,
            }),
        ))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    /// A failed attempt may have created the client (then failed correcting it or adding its
    /// scope): rollback removes it when the run created it ([`CREATED_BY_KEY`]).
    fn compensates_failure(&self) -> bool {
        true
    }

    /// Undoes what this run created, read from the live state rather than from this attempt's
    /// output: an earlier attempt whose create got no answer may have created the client and
    /// the secret, and the attempt that succeeded then found both there (`created: false`).
    async fn compensate(&self, ctx: &PhaseContext, output: &Value) -> Result<(), PhaseError> {
        let from = super::code(&self.from)?;
        let to = super::code(&self.to)?;
        let services = Services::of(ctx)?;
        // An instance reset since is already clean.
        if let Ok(x) = super::instance(services.instances(), &from).await {
            let admin = admin(ctx, &x).await?;
            let realm = x.realm();
            let client = match admin.realm(&realm).await? {
                Some(_) => admin.client_by_client_id(&realm, &client_id(&to)).await?,
                None => None,
            };
            if let Some(client) = client
                && let Some(id) = &client.id
                && (flag(output, "created")
                    || client
                        .attributes
                        .as_ref()
                        .is_some_and(|a| a.get(CREATED_BY_KEY) == Some(&ctx.run_id.to_string())))
                && admin.delete_client(&realm, id).await?
            {
                tracing::info!(from = %from, to = %to, "deleted the federation client this run created (compensation)");
            }
        }
        let name = client_secret_name(&from, &to);
        let store = services.secrets();
        if flag(output, "secret_created") || store.minted_by(&name, &origin(ctx)).await?.is_some() {
            store.delete_prefix(&name).await?;
            tracing::info!(secret = %name, "deleted the federation secret this run created (compensation)");
        }
        Ok(())
    }

    async fn precheck(&self, ctx: &PhaseContext) -> Result<(), String> {
        let reg = Services::of(ctx).map_err(|e| e.to_string())?.instances();
        super::pair(reg, &self.from, &self.to).await.map(|_| ())
    }

    fn breaker_key(&self) -> Option<String> {
        breaker(&self.from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_corrects_redirects_secret_version_and_flow_settings() {
        let want = wanted(
            "federation-fra",
            "FRA",
            "http://p/realms/dive-fra/broker/usa-idp/endpoint",
            1,
        );
        let mut have = want.clone();
        have.id = Some("x".into());
        have.extra.insert("fullScopeAllowed".into(), json!(true));
        assert!(merge_client(&mut have, &want).is_empty());

        have.redirect_uris = Some(vec!["*".into()]);
        have.direct_access_grants_enabled = Some(true);
        let want2 = wanted(
            "federation-fra",
            "FRA",
            "http://p/realms/dive-fra/broker/usa-idp/endpoint",
            2,
        );
        assert_eq!(
            merge_client(&mut have, &want2),
            ["directAccessGrantsEnabled", "redirectUris", "attributes"]
        );
        assert_eq!(have.attributes.as_ref().unwrap()[SECRET_VERSION_KEY], "2");
        assert_eq!(have.extra["fullScopeAllowed"], json!(true));
        assert!(!serde_json::to_string(&want).unwrap().contains("\"secret\""));
    }
}
