//! Secret rotation (`secret-rotation` workflow): every secret of an instance and of its
//! federation links is replaced by a new version without a failed login, verified by real
//! logins, resumable after a crash and rolled back on failure.
//!
//! The store is the source of truth. A new version is committed before it is applied anywhere
//! and is marked with the run that minted it (`origin = run:<id>`), so a run resumed after a
//! crash finds the version it already minted instead of minting a second one, and every later
//! phase knows which secrets this run rotates by asking the store, not by trusting a checkpoint.
//!
//! Kind `federation` (the client secret of each direction X→P of each link of the instance):
//!
//! | type                            | does                                                       |
//! |---------------------------------|------------------------------------------------------------|
//! | `rotation.mint`                 | a new version of each secret in the store                  |
//! | `rotation.federation_client`    | X's client `federation-<p>` gets it; the old one stays accepted (rotated) |
//! | `rotation.federation_provider`  | P's provider `<x>-idp` gets it                             |
//! | `rotation.verify`               | a real brokered login in every direction of the links      |
//! | `rotation.finish`               | X drops the old secret; old versions beyond `keep` pruned  |
//!
//! Kind `certificate` (`rotation.certificate`): Keycloak's HTTPS certificate, renewed in place.
//!
//! Rollback runs in reverse: the provider gets the old value back while the client still
//! accepts both, then the client's primary goes back to the old value, then the minted version
//! is removed from the store — so no login fails on the way back either.
//!
//! Every phase takes `code` (the instance) and `only` (the kinds, comma-separated, `all` by
//! default); a phase whose kind is not selected does nothing. `rotation.mint` also takes
//! `older_than` (a duration, `0s` by default): a secret whose latest version is younger is
//! skipped.

mod admin;
mod certificate;
mod database;
mod each;
mod federation_client;
mod federation_provider;
mod finish;
mod mint;
mod signing_activate;
mod signing_publish;
mod signing_retire;
mod users;
mod verify;

pub use admin::RotateAdmin;
pub use certificate::RotateCertificate;
pub use database::RotateDatabase;
pub use each::RotationEach;
pub use federation_client::RotateFederationClient;
pub use federation_provider::RotateFederationProvider;
pub use finish::RotationFinish;
pub use mint::RotationMint;
pub use signing_activate::RotateSigningActivate;
pub use signing_publish::RotateSigningPublish;
pub use signing_retire::RotateSigningRetire;
pub use users::RotateUsers;
pub use verify::RotationVerify;

use crate::context::Services;
use crate::federation::{client_secret_name, code};
use dive_engine::subflow::SubWorkflow;
use dive_engine::{Action, Change, Phase, PhaseContext, PhaseError, SENSITIVE};
use dive_instances::{InstanceRecord, lock_key, normalize_code};
use dive_secrets::{Secret, SecretStore};
use serde_json::Value;
use std::collections::BTreeMap;

/// The kinds of secrets `dive secrets rotate --only` names.
pub const KINDS: [&str; 6] = [
    "federation",
    "signing-key",
    "admin",
    "users",
    "database",
    "certificate",
];
/// Workflow parameter type `rotation-kinds`: `all` or a comma-separated list of [`KINDS`].
pub const KINDS_TYPE: &str = "rotation-kinds";
/// Versions of a secret kept after a rotation (the latest and the ones before it), for rollback.
pub const DEFAULT_KEEP: u32 = 3;

/// Checks `only` (the `rotation-kinds` parameter type) and returns it normalised.
pub fn check_kinds(only: &str) -> Result<String, String> {
    let kinds = parse_kinds(only)?;
    Ok(kinds.join(","))
}

/// `only` as a list of kinds (`all`: every kind).
pub fn parse_kinds(only: &str) -> Result<Vec<&'static str>, String> {
    let only = only.trim();
    if only.is_empty() || only.eq_ignore_ascii_case("all") {
        return Ok(KINDS.to_vec());
    }
    let mut out = Vec::new();
    for part in only.split(',').map(str::trim) {
        let Some(kind) = KINDS.iter().find(|k| k.eq_ignore_ascii_case(part)) else {
            return Err(format!(
                "unknown secret kind `{part}`: expected `all` or one or more of {} \
                 (comma-separated)",
                KINDS.join(", ")
            ));
        };
        if !out.contains(kind) {
            out.push(*kind);
        }
    }
    Ok(out)
}

/// Whether `kind` is among the selected kinds (`only` was checked when the run was planned).
pub(crate) fn selected(only: &str, kind: &str) -> Result<bool, PhaseError> {
    Ok(parse_kinds(only)
        .map_err(PhaseError::fatal)?
        .contains(&kind))
}

fn default_only() -> String {
    "all".into()
}

fn zero_duration() -> String {
    "0s".into()
}

/// `older_than` as a duration (`30d`, `12h`, `0s`).
pub(crate) fn parse_older_than(text: &str) -> Result<std::time::Duration, PhaseError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        PhaseError::fatal(format!(
            "older_than: `{text}` is not a duration ({e}); expected e.g. 30d, 12h or 0s"
        ))
    })
}

/// How young the latest version of `name` is when it is younger than `older_than` and this run
/// did not make it: a rotation with `--older-than` leaves such a secret alone.
pub(crate) async fn too_young(
    store: &SecretStore,
    name: &str,
    origin: &str,
    older_than: &str,
) -> Result<Option<std::time::Duration>, PhaseError> {
    if store.minted_by(name, origin).await?.is_some() {
        return Ok(None);
    }
    let Some(info) = store.info(name).await? else {
        return Ok(None);
    };
    let age = (chrono::Utc::now() - info.updated_at)
        .to_std()
        .unwrap_or_default();
    Ok((age < parse_older_than(older_than)?).then_some(age))
}

/// Converges instance `rec` with its deploy workflow as a child run (`instance-deploy`), so it
/// takes up what the store now holds; returns the child's output.
pub(crate) async fn converge(
    ctx: &PhaseContext,
    rec: &InstanceRecord,
) -> Result<Value, PhaseError> {
    SubWorkflow {
        workflow: "instance-deploy".into(),
        params: BTreeMap::from([
            ("code".to_string(), rec.code.clone()),
            ("role".to_string(), rec.role.as_str().to_string()),
        ]),
    }
    .run(ctx)
    .await
}

/// The signing key a run creates: `dive-signing-<run id>` (so a re-run finds it).
pub(crate) fn signing_key_name(ctx: &PhaseContext) -> String {
    format!("dive-signing-{}", ctx.run_id.simple())
}

pub(crate) use crate::context::origin;

/// One direction X→P of a link: X's client, P's provider, the secret between them.
pub(crate) struct Direction {
    pub x: InstanceRecord,
    pub p: InstanceRecord,
    pub secret: String,
}

/// Every direction of every federation link of `code` (both directions of each pair).
pub(crate) async fn directions(
    ctx: &PhaseContext,
    code_: &str,
) -> Result<Vec<Direction>, PhaseError> {
    let code_ = code(code_)?;
    let services = Services::of(ctx)?;
    let reg = services.instances();
    let links = dive_verify::links(services.pool())
        .await
        .map_err(|e| PhaseError::retryable(e.to_string()))?;
    let mut out = Vec::new();
    for (hub, spoke, _, _) in links {
        if hub != code_ && spoke != code_ {
            continue;
        }
        let (h, s) = crate::federation::pair(reg, &hub, &spoke)
            .await
            .map_err(PhaseError::fatal)?;
        for (x, p) in [(h.clone(), s.clone()), (s, h)] {
            let secret = client_secret_name(&x.code, &p.code);
            out.push(Direction { x, p, secret });
        }
    }
    Ok(out)
}

/// The directions of the links of `code` whose client secret this run minted, each with its
/// new and previous value; none when kind `federation` is not selected (`only`).
pub(crate) async fn rotated_directions(
    ctx: &PhaseContext,
    code: &str,
    only: &str,
) -> Result<Vec<(Direction, Minted)>, PhaseError> {
    let mut out = Vec::new();
    if !selected(only, "federation")? {
        return Ok(out);
    }
    let store = Services::of(ctx)?.secrets();
    let origin = origin(ctx);
    for d in directions(ctx, code).await? {
        if let Some(m) = minted(store, &d.secret, &origin).await? {
            out.push((d, m));
        }
    }
    Ok(out)
}

/// Sets `username`'s password in `realm` to `value` unless it already works; returns whether
/// it changed it.
pub(crate) async fn set_password(
    admin: &dive_keycloak::KeycloakAdmin,
    realm: &str,
    username: &str,
    value: &str,
) -> Result<bool, PhaseError> {
    if admin.check_password(realm, username, value).await? {
        return Ok(false);
    }
    let id = admin
        .user_by_username(realm, username)
        .await?
        .and_then(|u| u.id)
        .ok_or_else(|| {
            PhaseError::fatal(format!(
                "{}: no user {username} in realm {realm} (deploy the instance again)",
                admin.name()
            ))
        })?;
    admin.reset_password(realm, &id, value).await?;
    Ok(true)
}

/// The version of `name` this run minted, with its value and the value of the version before
/// it; `None` when this run does not rotate `name`.
pub(crate) async fn minted(
    store: &SecretStore,
    name: &str,
    origin: &str,
) -> Result<Option<Minted>, PhaseError> {
    let Some(version) = store.minted_by(name, origin).await? else {
        return Ok(None);
    };
    let value = version_value(store, name, version).await?;
    let previous = version_value(store, name, version - 1).await?;
    Ok(Some(Minted {
        version,
        value,
        previous,
    }))
}

async fn version_value(
    store: &SecretStore,
    name: &str,
    version: u32,
) -> Result<Secret, PhaseError> {
    store.get_version(name, version).await?.ok_or_else(|| {
        PhaseError::fatal(format!(
            "secret `{name}` has no version {version}: it was pruned or removed during the rotation"
        ))
    })
}

/// In a dry run: the secrets `rotation.mint` would mint, each with its current and its new
/// version, read from mint's planned output (`minted`) — so that the later phases plan exactly
/// what mint decided (kinds, `older_than`) instead of guessing. Empty in a run.
pub(crate) fn planned_mints(ctx: &PhaseContext) -> BTreeMap<String, (u32, u32)> {
    ctx.planned_outputs
        .values()
        .filter_map(|o| o["minted"].as_array())
        .flatten()
        .filter_map(|m| {
            let version = u32::try_from(m["version"].as_u64()?).ok()?;
            Some((m["secret"].as_str()?.to_string(), (version - 1, version)))
        })
        .collect()
}

/// In a dry run: the directions of the links of `code` whose secret mint would mint, with the
/// versions ([`planned_mints`]).
pub(crate) async fn planned_directions(
    ctx: &PhaseContext,
    code: &str,
) -> Result<Vec<(Direction, (u32, u32))>, PhaseError> {
    let mints = planned_mints(ctx);
    Ok(directions(ctx, code)
        .await?
        .into_iter()
        .filter_map(|d| {
            let versions = *mints.get(&d.secret)?;
            Some((d, versions))
        })
        .collect())
}

/// A planned password change: the value is never shown, the version is.
pub(crate) fn password_change(
    code: &str,
    object: String,
    (previous, version): (u32, u32),
) -> Change {
    Change::new(Some(code), object, Action::Update)
        .field("password", SENSITIVE, SENSITIVE)
        .field("secret version", previous, version)
}

/// A version minted by this run and the one it replaces.
pub(crate) struct Minted {
    pub version: u32,
    pub value: Secret,
    pub previous: Secret,
}

/// A secret an instance needs: its name, the kind that rotates it, and how a missing one is
/// generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeededSecret {
    pub name: String,
    pub kind: &'static str,
    pub length: usize,
}

/// Every secret instance `code` needs, given the instances it is linked with: its database and
/// Keycloak passwords (`database`), its admin password (`admin`), its test users' passwords
/// (`users`), and the client secret of each direction of each link (`federation`) — what the
/// deploy and link workflows ensure.
pub fn needed_secrets(code: &str, partners: &[String]) -> Vec<NeededSecret> {
    let lower = code.to_ascii_lowercase();
    let secret = |name: String, kind, length| NeededSecret { name, kind, length };
    let mut out = vec![
        secret(format!("{lower}/postgres/password"), "database", 32),
        secret(format!("{lower}/keycloak/db-password"), "database", 32),
        secret(dive_keycloak::admin_password_secret(code), "admin", 32),
    ];
    out.extend(dive_keycloak::test_users(&lower).into_iter().map(|u| {
        secret(
            dive_keycloak::user_password_secret(&lower, &u.username),
            "users",
            crate::keycloak::PASSWORD_LENGTH,
        )
    }));
    for p in partners {
        for name in [client_secret_name(code, p), client_secret_name(p, code)] {
            out.push(secret(name, "federation", crate::federation::SECRET_LENGTH));
        }
    }
    out
}

/// The instances linked with `code` (hub: every spoke; spoke: the hub).
pub async fn partners(pool: &sqlx::PgPool, code: &str) -> Result<Vec<String>, String> {
    let links = dive_verify::links(pool).await.map_err(|e| e.to_string())?;
    Ok(links
        .into_iter()
        .filter_map(|(hub, spoke, _, _)| {
            if hub == code {
                Some(spoke)
            } else if spoke == code {
                Some(hub)
            } else {
                None
            }
        })
        .collect())
}

/// Lock key `linked:<CODE>`: stands for the instance keys of CODE and of every instance linked
/// with it (see [`LinkedInstances`]); `linked:*` for those of every registered instance.
pub const LINKED_PREFIX: &str = "linked:";

/// Expands `linked:<CODE>` into `instance:<CODE>` and `instance:<P>` for every instance P
/// federated with CODE, read from `federation_links` when the run starts.
pub struct LinkedInstances {
    pub pool: sqlx::PgPool,
}

#[dive_engine::async_trait]
impl dive_engine::LockExpander for LinkedInstances {
    async fn expand(&self, key: &str) -> Result<Option<Vec<String>>, String> {
        let Some(code_) = key.strip_prefix(LINKED_PREFIX) else {
            return Ok(None);
        };
        if code_ == "*" {
            let all = dive_instances::Instances::new(self.pool.clone())
                .list()
                .await
                .map_err(|e| e.to_string())?;
            // Nothing deployed: the key itself still keeps two such runs apart.
            if all.is_empty() {
                return Ok(None);
            }
            return Ok(Some(all.iter().map(|i| lock_key(&i.code)).collect()));
        }
        let code_ = normalize_code(code_)?;
        let mut keys = vec![lock_key(&code_)];
        keys.extend(
            partners(&self.pool, &code_)
                .await?
                .iter()
                .map(|p| lock_key(p)),
        );
        Ok(Some(keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_checked_and_normalised() {
        let all = "federation,signing-key,admin,users,database,certificate";
        assert_eq!(check_kinds("all").unwrap(), all);
        assert_eq!(check_kinds("").unwrap(), all);
        assert_eq!(
            check_kinds(" Federation, federation").unwrap(),
            "federation"
        );
        assert_eq!(check_kinds("users,admin").unwrap(), "users,admin");
        let err = check_kinds("federation,passwords").unwrap_err();
        assert!(
            err.contains("`passwords`") && err.contains("signing-key"),
            "{err}"
        );
    }
}
