//! `federation.idp`: in realm `dive-<to>` of instance P (`to`), the OIDC identity provider
//! `<from>-idp` that sends P's login page to instance X (`from`), and its four attribute mappers.
//!
//! ```yaml
//! - id: idp-usa-fra
//!   type: federation.idp
//!   after: [client-usa-fra]   # the client phase ensures the secret
//!   from: USA
//!   to: FRA
//! ```
//! The provider: providerId `oidc`, enabled, trustEmail, syncMode FORCE, first broker login flow
//! `first broker login`; authorizationUrl and issuer on X's front URL (what a browser uses and
//! what X's tokens carry), tokenUrl, jwksUrl and userInfoUrl on X's back-channel URL (see the
//! [module docs](super)); clientId `federation-<to>`, clientSecret from secret
//! `federation/<from>/<to>/client-secret` (which must exist: `federation.client` ensures it),
//! client_secret_post, defaultScope `openid profile email dive-attributes`, signature validated
//! with X's JWKS, PKCE S256. The secret version given to Keycloak is kept in the config key
//! `dive.secret.version` (Keycloak never shows the secret back). Mappers
//! `oidc-user-attribute-idp-mapper` named after, and mapping, `uniqueID`, `clearance`,
//! `countryOfAffiliation`, `acpCOI` (claim → user attribute, sync mode FORCE). Output `{from, to,
//! realm, alias, created, updated, fixed, mappers_added, mappers_fixed, users_relinked, secret_version,
//! changed}`.
//!
//! Users of X that an earlier brokered login copied into P's realm and that lost their link to
//! `<x>-idp` (deleting a provider removes its links; Keycloak then fails those users' logins)
//! are linked again to their account at X (`users_relinked`).
//!
//! Idempotency: a missing provider is created; an existing one is corrected and written back
//! with the store's secret on every run (Keycloak masks the secret it holds, so one changed
//! behind dive's back can only be overwritten, not seen); each mapper is created when missing
//! and corrected when it differs. A second run changes nothing and reports `changed: false`.
//!
//! Compensation: deletes the provider (and with it its mappers) if this run created it;
//! otherwise deletes only the mappers it added. Both are found in the live state by the run's
//! mark (config `dive.created.run`), so a failed attempt is undone too. Changes to an existing
//! provider are not undone.

use super::{
    CREATED_BY_KEY, SECRET_VERSION_KEY, admin, backchannel_url, breaker, client_id,
    client_secret_name, code_field, enc, idp_alias, realm_path, resolve,
};
use crate::context::Services;
use dive_engine::{
    Action, Change, Phase, PhaseContext, PhaseError, PhasePlan, SENSITIVE, async_trait, typetag,
};
use dive_instances::InstanceRecord;
use dive_keycloak::{DIVE_ATTRIBUTES, KeycloakAdmin};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The mapper type that copies a claim of the partner's token into a user attribute.
pub const MAPPER_TYPE: &str = "oidc-user-attribute-idp-mapper";
pub(crate) const FIRST_BROKER_LOGIN: &str = "first broker login";
const DEFAULT_SCOPE: &str = "openid profile email dive-attributes";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationIdp {
    #[serde(deserialize_with = "code_field")]
    pub from: String,
    #[serde(deserialize_with = "code_field")]
    pub to: String,
}

pub(crate) fn idp_path(realm: &str, alias: &str) -> String {
    realm_path(
        realm,
        &format!("/identity-provider/instances/{}", enc(alias)),
    )
}

/// The provider's top-level settings and its config, without the secret.
fn wanted(
    alias: &str,
    from: &str,
    front: &str,
    back: &str,
    to: &str,
    secret_version: u32,
) -> (Map<String, Value>, Map<String, Value>) {
    let realm = format!("dive-{}", from.to_ascii_lowercase());
    let front = format!("{front}/realms/{realm}");
    let back = format!("{back}/realms/{realm}");
    let top = Map::from_iter([
        ("alias".to_string(), json!(alias)),
        ("displayName".to_string(), json!(format!("DIVE {from}"))),
        ("providerId".to_string(), json!("oidc")),
        ("enabled".to_string(), json!(true)),
        ("trustEmail".to_string(), json!(true)),
        (
            "firstBrokerLoginFlowAlias".to_string(),
            json!(FIRST_BROKER_LOGIN),
        ),
    ]);
    let s = |v: &str| json!(v);
    let config = Map::from_iter([
        ("syncMode".to_string(), s("FORCE")),
        (
            "authorizationUrl".to_string(),
            s(&format!("{front}/protocol/openid-connect/auth")),
        ),
        ("issuer".to_string(), s(&front)),
        (
            "tokenUrl".to_string(),
            s(&format!("{back}/protocol/openid-connect/token")),
        ),
        (
            "jwksUrl".to_string(),
            s(&format!("{back}/protocol/openid-connect/certs")),
        ),
        (
            "userInfoUrl".to_string(),
            s(&format!("{back}/protocol/openid-connect/userinfo")),
        ),
        ("clientId".to_string(), s(&client_id(to))),
        ("clientAuthMethod".to_string(), s("client_secret_post")),
        ("defaultScope".to_string(), s(DEFAULT_SCOPE)),
        ("validateSignature".to_string(), s("true")),
        ("useJwksUrl".to_string(), s("true")),
        ("pkceEnabled".to_string(), s("true")),
        ("pkceMethod".to_string(), s("S256")),
        (
            SECRET_VERSION_KEY.to_string(),
            s(&secret_version.to_string()),
        ),
    ]);
    (top, config)
}

/// Corrects `have` (a provider representation) towards `top` and `config`; returns what changed.
fn merge_idp(
    have: &mut Value,
    top: &Map<String, Value>,
    config: &Map<String, Value>,
) -> Vec<String> {
    let mut changed = Vec::new();
    let Some(obj) = have.as_object_mut() else {
        return vec!["representation".into()];
    };
    for (k, v) in top {
        if obj.get(k) != Some(v) {
            obj.insert(k.clone(), v.clone());
            changed.push(k.clone());
        }
    }
    let have_config = obj
        .entry("config")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(have_config) = have_config else {
        obj.insert("config".into(), Value::Object(config.clone()));
        changed.push("config".into());
        return changed;
    };
    for (k, v) in config {
        if have_config.get(k) != Some(v) {
            have_config.insert(k.clone(), v.clone());
            changed.push(format!("config.{k}"));
        }
    }
    changed
}

/// The mapper for `attribute` as dive wants it.
fn wanted_mapper(alias: &str, attribute: &str) -> Value {
    json!({
        "name": attribute,
        "identityProviderAlias": alias,
        "identityProviderMapper": MAPPER_TYPE,
        "config": { "claim": attribute, "user.attribute": attribute, "syncMode": "FORCE" },
    })
}

/// Whether an existing mapper already does what `want` says.
fn mapper_matches(have: &Value, want: &Value) -> bool {
    if have["identityProviderMapper"] != want["identityProviderMapper"] {
        return false;
    }
    want["config"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| have["config"].get(k) == Some(v))
}

/// How the mappers of provider `alias` differ from the four dive wants.
#[derive(Default)]
pub(crate) struct MapperDiff {
    /// Attributes without a mapper.
    pub missing: Vec<&'static str>,
    /// Attributes whose mapper does something else: `(attribute, mapper id, corrected mapper)`.
    pub differing: Vec<(&'static str, String, Value)>,
}

fn mappers_path(realm: &str, alias: &str) -> String {
    format!("{}/mappers", idp_path(realm, alias))
}

/// Compares the provider's mappers with the wanted ones. Only reads.
pub(crate) async fn diff_mappers(
    admin: &KeycloakAdmin,
    realm: &str,
    alias: &str,
) -> Result<MapperDiff, PhaseError> {
    let existing: Vec<Value> = admin.get(&mappers_path(realm, alias)).await?;
    let mut out = MapperDiff::default();
    for attribute in DIVE_ATTRIBUTES {
        let want = wanted_mapper(alias, attribute);
        match existing.iter().find(|m| m["name"] == attribute) {
            None => out.missing.push(attribute),
            Some(have) if !mapper_matches(have, &want) => {
                let id = have["id"].as_str().unwrap_or_default().to_string();
                let mut rep = have.clone();
                rep["identityProviderMapper"] = want["identityProviderMapper"].clone();
                match rep["config"].as_object_mut() {
                    Some(c) => {
                        for (k, v) in want["config"].as_object().into_iter().flatten() {
                            c.insert(k.clone(), v.clone());
                        }
                    }
                    None => rep["config"] = want["config"].clone(),
                }
                out.differing.push((attribute, id, rep));
            }
            Some(_) => {}
        }
    }
    Ok(out)
}

/// Creates the missing mappers (marked with the run, [`CREATED_BY_KEY`], so that a rollback
/// finds them even after a failed attempt) and corrects the differing ones.
async fn ensure_mappers(
    admin: &KeycloakAdmin,
    realm: &str,
    alias: &str,
    run: &str,
) -> Result<MapperDiff, PhaseError> {
    let diff = diff_mappers(admin, realm, alias).await?;
    let path = mappers_path(realm, alias);
    for attribute in &diff.missing {
        let mut mapper = wanted_mapper(alias, attribute);
        mapper["config"][CREATED_BY_KEY] = json!(run);
        admin.post(&path, &mapper).await?;
    }
    for (_, id, rep) in &diff.differing {
        admin.put(&format!("{path}/{}", enc(id)), Some(rep)).await?;
    }
    Ok(diff)
}

/// A user of X with a copy in P's realm (made by an earlier brokered login) that is linked to
/// no identity provider: deleting `<x>-idp` removes those links, and Keycloak then fails every
/// login of that user through a new `<x>-idp`. Users of X are those whose `countryOfAffiliation`
/// is X, in both realms (the copy has it from the FORCE-synced mapper); the copy is matched to
/// the user at X by username.
pub(crate) struct Unlinked {
    pub username: String,
    /// The copy's id in P's realm.
    pub id: String,
    /// The user's id in X's realm: the `sub` of X's tokens, which the link records.
    pub home_id: String,
}

/// Most users read from each realm when looking for [`Unlinked`] copies.
const USERS_PAGE: u32 = 1000;

/// The [`Unlinked`] users of X in P's realm. Only reads.
pub(crate) async fn unlinked_users(
    home: &KeycloakAdmin,
    x: &InstanceRecord,
    admin: &KeycloakAdmin,
    realm: &str,
) -> Result<Vec<Unlinked>, PhaseError> {
    let home_realm = x.realm();
    let users = |realm: &str| {
        realm_path(
            realm,
            &format!(
                "/users?briefRepresentation=true&max={USERS_PAGE}&q=countryOfAffiliation:{}",
                enc(&x.code)
            ),
        )
    };
    let at_home: Vec<Value> = home.get(&users(&home_realm)).await?;
    let here: Vec<Value> = admin.get(&users(realm)).await?;
    let mut out = Vec::new();
    for copy in &here {
        let (Some(name), Some(id)) = (copy["username"].as_str(), copy["id"].as_str()) else {
            continue;
        };
        let Some(home_id) = at_home
            .iter()
            .find(|u| u["username"] == name)
            .and_then(|u| u["id"].as_str())
        else {
            continue;
        };
        let links: Vec<Value> = admin
            .get(&realm_path(
                realm,
                &format!("/users/{}/federated-identity", enc(id)),
            ))
            .await?;
        if links.is_empty() {
            out.push(Unlinked {
                username: name.to_string(),
                id: id.to_string(),
                home_id: home_id.to_string(),
            });
        }
    }
    Ok(out)
}

/// Links every [`Unlinked`] copy to provider `alias` again; returns their usernames.
async fn relink(
    home: &KeycloakAdmin,
    x: &InstanceRecord,
    admin: &KeycloakAdmin,
    realm: &str,
    alias: &str,
) -> Result<Vec<String>, PhaseError> {
    let mut done = Vec::new();
    for u in unlinked_users(home, x, admin, realm).await? {
        let path = realm_path(
            realm,
            &format!("/users/{}/federated-identity/{}", enc(&u.id), enc(alias)),
        );
        let link = json!({"identityProvider": alias, "userId": u.home_id, "userName": u.username});
        match admin.post(&path, &link).await {
            Ok(_) => {}
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e.into()),
        }
        done.push(u.username);
    }
    Ok(done)
}

/// `change` with the fields that differ between a provider's (or mapper's) representation
/// `have` and `corrected`: top-level settings, and those under `config` one by one
/// (`config.issuer`); the client secret, which Keycloak shows masked, is never compared.
fn config_diff(change: Change, have: &Value, corrected: &Value) -> Change {
    let mut change = change.diff(have, corrected);
    change.fields.retain(|f| f.field != "config");
    let empty = Map::new();
    let old = have["config"].as_object().unwrap_or(&empty);
    for (k, v) in corrected["config"].as_object().into_iter().flatten() {
        if old.get(k) != Some(v) && k != "clientSecret" {
            let before = old.get(k).cloned().unwrap_or(Value::Null);
            change = change.field(&format!("config.{k}"), before, v.clone());
        }
    }
    change
}

/// How provider `<x>-idp` in P's realm differs from what dive wants.
pub(crate) struct IdpDiff {
    /// The provider as Keycloak has it, corrected towards what dive wants (secret masked).
    pub corrected: Value,
    /// Settings that differ (`config.` prefix for the config map).
    pub fixed: Vec<String>,
}

/// The provider dive wants in P's realm for users of X: `(alias, top-level settings, config)`.
pub(crate) fn wanted_for(
    x: &InstanceRecord,
    p: &InstanceRecord,
    secret_version: u32,
) -> (String, Map<String, Value>, Map<String, Value>) {
    let alias = idp_alias(&x.code);
    let (top, config) = wanted(
        &alias,
        &x.code,
        &x.keycloak_url(),
        &backchannel_url(x),
        &p.code,
        secret_version,
    );
    (alias, top, config)
}

/// Compares provider `alias` in `realm` with what dive wants; `None` when it does not exist.
/// Only reads.
pub(crate) async fn diff_idp(
    admin: &KeycloakAdmin,
    realm: &str,
    alias: &str,
    top: &Map<String, Value>,
    config: &Map<String, Value>,
) -> Result<Option<IdpDiff>, PhaseError> {
    let Some(mut have) = admin.get_opt::<Value>(&idp_path(realm, alias)).await? else {
        return Ok(None);
    };
    let fixed = merge_idp(&mut have, top, config);
    Ok(Some(IdpDiff {
        corrected: have,
        fixed,
    }))
}

/// What ensuring provider `<x>-idp` in P's realm would change, compared like `run` does
/// ([`diff_idp`], [`diff_mappers`], [`unlinked_users`]): the provider created or corrected (each
/// setting's old and new value), its mappers, the users linked to it again. `admin` is P's
/// Keycloak, `home` X's. Shared by the plan and `federation drift`. Only reads.
pub(crate) struct ProviderChanges {
    pub changes: Vec<Change>,
    pub created: bool,
    pub fixed: Vec<String>,
    pub mappers_added: Vec<&'static str>,
    pub mappers_fixed: Vec<&'static str>,
    pub relinked: Vec<String>,
}

pub(crate) async fn provider_changes(
    admin: &KeycloakAdmin,
    home: &KeycloakAdmin,
    x: &InstanceRecord,
    p: &InstanceRecord,
    secret_version: u32,
) -> Result<ProviderChanges, PhaseError> {
    let realm = p.realm();
    let (alias, top, config) = wanted_for(x, p, secret_version);
    let change = |what: String, action| {
        Change::new(Some(&p.code), format!("{what} in realm {realm}"), action)
    };
    let provider = format!("identity provider {alias}");
    let mut wanted = Value::Object(top.clone());
    wanted["config"] = Value::Object(config.clone());
    let mut changes = Vec::new();
    let diff = diff_idp(admin, &realm, &alias, &top, &config).await?;
    let created = diff.is_none();
    let mut fixed = Vec::new();
    let (mappers_added, mappers_fixed): (Vec<&'static str>, Vec<&'static str>) = match diff {
        None => {
            changes.push(
                change(provider.clone(), Action::Create)
                    .diff(&Value::Null, &wanted)
                    .field("clientSecret", Value::Null, SENSITIVE),
            );
            for attribute in DIVE_ATTRIBUTES {
                changes.push(
                    change(format!("mapper {attribute} of {alias}"), Action::Create)
                        .diff(&Value::Null, &wanted_mapper(&alias, attribute)),
                );
            }
            (DIVE_ATTRIBUTES.to_vec(), Vec::new())
        }
        Some(diff) => {
            fixed = diff.fixed.clone();
            if !fixed.is_empty() {
                let have: Value = admin.get(&idp_path(&realm, &alias)).await?;
                changes.push(config_diff(
                    change(provider.clone(), Action::Update),
                    &have,
                    &diff.corrected,
                ));
            }
            let mappers = diff_mappers(admin, &realm, &alias).await?;
            let existing: Vec<Value> = admin.get(&mappers_path(&realm, &alias)).await?;
            for attribute in &mappers.missing {
                changes.push(
                    change(format!("mapper {attribute} of {alias}"), Action::Create)
                        .diff(&Value::Null, &wanted_mapper(&alias, attribute)),
                );
            }
            for (attribute, id, corrected) in &mappers.differing {
                let have = existing
                    .iter()
                    .find(|m| m["id"] == id.as_str())
                    .cloned()
                    .unwrap_or(Value::Null);
                changes.push(config_diff(
                    change(format!("mapper {attribute} of {alias}"), Action::Update),
                    &have,
                    corrected,
                ));
            }
            let differing = mappers.differing.iter().map(|(a, _, _)| *a).collect();
            (mappers.missing, differing)
        }
    };
    let relinked: Vec<String> = unlinked_users(home, x, admin, &realm)
        .await?
        .into_iter()
        .map(|u| u.username)
        .collect();
    for user in &relinked {
        changes.push(
            change(format!("user {user}"), Action::Update).because(format!(
                "not linked to {alias} (its link went with a deleted provider): its logins \
                 from {} fail; the link would be made again",
                x.code
            )),
        );
    }
    Ok(ProviderChanges {
        changes,
        created,
        fixed,
        mappers_added,
        mappers_fixed,
        relinked,
    })
}

impl FederationIdp {
    /// Compensation of a failed attempt: the provider goes if this run created it.
    /// Undoes what this run did, read from the live state: the provider when this run created
    /// it, otherwise the mappers it added (both carry the run's [`CREATED_BY_KEY`]).
    async fn undo(&self, ctx: &PhaseContext) -> Result<(), PhaseError> {
        let (from, to) = (super::code(&self.from)?, super::code(&self.to)?);
        let Ok(p) = super::instance(Services::of(ctx)?.instances(), &to).await else {
            return Ok(());
        };
        let admin = admin(ctx, &p).await?;
        let realm = p.realm();
        if admin.realm(&realm).await?.is_none() {
            return Ok(());
        }
        let path = idp_path(&realm, &idp_alias(&from));
        let Some(idp) = admin.get_opt::<Value>(&path).await? else {
            return Ok(());
        };
        let run = json!(ctx.run_id.to_string());
        if idp["config"][CREATED_BY_KEY] == run {
            admin.delete(&path).await?;
            tracing::info!(from = %from, to = %to, "deleted federation identity provider (compensation)");
            return Ok(());
        }
        let mappers: Vec<Value> = admin.get(&format!("{path}/mappers")).await?;
        for m in mappers {
            if m["config"][CREATED_BY_KEY] == run
                && let Some(id) = m["id"].as_str()
            {
                admin.delete(&format!("{path}/mappers/{}", enc(id))).await?;
                tracing::info!(from = %from, to = %to, mapper = %m["name"],
                    "deleted a mapper this run added (compensation)");
            }
        }
        Ok(())
    }
}

#[typetag::serde(name = "federation.idp")]
#[async_trait]
impl Phase for FederationIdp {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let (x, p) = resolve(ctx, &self.from, &self.to).await?;
        let store = Services::of(ctx)?.secrets();
        let secret_name = client_secret_name(&x.code, &p.code);
        let (secret, secret_version) = store.get(&secret_name).await?.ok_or_else(|| {
            PhaseError::fatal(format!(
                "secret `{secret_name}` does not exist (add a federation.client phase from \
                     {} to {} before this one)",
                x.code, p.code
            ))
        })?;
        let admin = admin(ctx, &p).await?;
        let realm = p.realm();
        if admin.realm(&realm).await?.is_none() {
            return Err(PhaseError::fatal(format!(
                "{}: realm `{realm}` does not exist (deploy {} again)",
                admin.name(),
                p.code
            )));
        }
        let (alias, top, config) = wanted_for(&x, &p, secret_version);
        let path = idp_path(&realm, &alias);
        let with_secret = |mut rep: Value| {
            rep["config"]["clientSecret"] = json!(secret.expose());
            rep
        };

        let mut created = false;
        let mut fixed = Vec::new();
        match diff_idp(&admin, &realm, &alias, &top, &config).await? {
            None => {
                let mut rep = Value::Object(top.clone());
                rep["config"] = Value::Object(config.clone());
                rep["config"][CREATED_BY_KEY] = json!(ctx.run_id.to_string());
                let instances = realm_path(&realm, "/identity-provider/instances");
                match admin.post(&instances, &with_secret(rep)).await {
                    Ok(_) => created = true,
                    Err(e) if e.is_conflict() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Some(diff) => {
                // Keycloak shows the secret masked, so a secret changed behind dive's back
                // cannot be seen, only overwritten: it is written on every run (one PUT, and
                // not reported as a change unless a setting or the version marker differed).
                fixed = diff.fixed;
                admin.put(&path, Some(&with_secret(diff.corrected))).await?;
            }
        }
        let mappers = ensure_mappers(&admin, &realm, &alias, &ctx.run_id.to_string()).await?;
        let home = super::admin(ctx, &x).await?;
        let relinked = relink(&home, &x, &admin, &realm, &alias).await?;
        let updated = !created && !fixed.is_empty();
        let added: Vec<&str> = mappers.missing.clone();
        let mappers_fixed: Vec<&str> = mappers.differing.iter().map(|(a, _, _)| *a).collect();
        let changed = created
            || updated
            || !added.is_empty()
            || !mappers_fixed.is_empty()
            || !relinked.is_empty();
        if changed {
            tracing::info!(from = %x.code, to = %p.code, realm = %realm, alias = %alias,
                created, ?fixed, ?added, "ensured federation identity provider");
        }
        Ok(json!({
            "from": x.code,
            "to": p.code,
            "realm": realm,
            "alias": alias,
            "created": created,
            "updated": updated,
            "fixed": fixed,
            "mappers_added": added,
            "mappers_fixed": mappers_fixed,
            "users_relinked": relinked,
            "secret_version": secret_version,
            "changed": changed,
        }))
    }

    /// What `run` would do ([`provider_changes`]). Only reads.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let (x, p) = resolve(ctx, &self.from, &self.to).await?;
        let store = Services::of(ctx)?.secrets();
        let secret_name = client_secret_name(&x.code, &p.code);
        // Made by the link's `federation.client` phase first when it does not exist yet.
        let secret_version = store.get(&secret_name).await?.map_or(1, |(_, v)| v);
        let admins = match (admin(ctx, &p).await, admin(ctx, &x).await) {
            (Ok(admin), Ok(home)) => (admin, home),
            (Err(e), _) | (_, Err(e)) => {
                let change = Change::new(
                    Some(&p.code),
                    format!(
                        "identity provider {} in realm {}",
                        idp_alias(&x.code),
                        p.realm()
                    ),
                    Action::KnownAfterApply,
                )
                .because(format!("Keycloak cannot be read now: {e}"));
                return Ok(PhasePlan::changes(vec![change], Value::Null));
            }
        };
        let planned = provider_changes(&admins.0, &admins.1, &x, &p, secret_version).await?;
        let changed = !planned.changes.is_empty();
        Ok(PhasePlan::changes(
            planned.changes,
            json!({
                "from": x.code, "to": p.code, "realm": p.realm(), "alias": idp_alias(&x.code),
                "created": planned.created, "updated": !planned.created && !planned.fixed.is_empty(),
                "fixed": planned.fixed, "mappers_added": planned.mappers_added,
                "mappers_fixed": planned.mappers_fixed, "users_relinked": planned.relinked,
                "secret_version": secret_version, "changed": changed,
            }),
        ))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    /// A failed attempt may have created the provider or some of its mappers (then failed on
    /// the others, or on its users): rollback removes what carries the run's mark.
    fn compensates_failure(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, _output: &Value) -> Result<(), PhaseError> {
        self.undo(ctx).await
    }

    async fn precheck(&self, ctx: &PhaseContext) -> Result<(), String> {
        let reg = Services::of(ctx).map_err(|e| e.to_string())?.instances();
        super::pair(reg, &self.from, &self.to).await.map(|_| ())
    }

    fn breaker_key(&self) -> Option<String> {
        breaker(&self.to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_and_back_channel_urls_are_split() {
        let (top, config) = wanted(
            "usa-idp",
            "USA",
            "http://127.0.0.1:20001",
            "http://dive-usa-keycloak:8080",
            "FRA",
            3,
        );
        assert_eq!(top["alias"], "usa-idp");
        assert_eq!(
            config["authorizationUrl"],
            "http://127.0.0.1:20001/realms/dive-usa/protocol/openid-connect/auth"
        );
        assert_eq!(config["issuer"], "http://127.0.0.1:20001/realms/dive-usa");
        assert_eq!(
            config["tokenUrl"],
            "http://dive-usa-keycloak:8080/realms/dive-usa/protocol/openid-connect/token"
        );
        assert_eq!(config["clientId"], "federation-fra");
        assert_eq!(config[SECRET_VERSION_KEY], "3");
        assert!(!config.contains_key("clientSecret"));

        let mut have =
            json!({"alias": "usa-idp", "extra": 1, "config": {"clientSecret": "**********"}});
        for (k, v) in &top {
            have[k] = v.clone();
        }
        for (k, v) in &config {
            have["config"][k] = v.clone();
        }
        assert!(merge_idp(&mut have, &top, &config).is_empty());
        have["config"]["issuer"] = json!("http://elsewhere");
        have["trustEmail"] = json!(false);
        assert_eq!(
            merge_idp(&mut have, &top, &config),
            ["trustEmail", "config.issuer"]
        );
        assert_eq!(have["extra"], 1);
        assert_eq!(have["config"]["clientSecret"], "**********");
    }

    #[test]
    fn mappers_compare_by_type_and_config() {
        let want = wanted_mapper("usa-idp", "acpCOI");
        let mut have = want.clone();
        have["id"] = json!("m1");
        have["config"]["extra"] = json!("x");
        assert!(mapper_matches(&have, &want));
        have["config"]["syncMode"] = json!("INHERIT");
        assert!(!mapper_matches(&have, &want));
    }
}
