//! Federation between the hub and a spoke (never two spokes), one direction at a time: a linked
//! pair (`federation-link`) is federated both ways. For one direction X→P (users of X log in at P):
//!
//! | type                 | ensures                                                                |
//! |----------------------|------------------------------------------------------------------------|
//! | `federation.client`  | in realm `dive-x` of X: confidential client `federation-<p>`, its secret |
//! | `federation.idp`     | in realm `dive-p` of P: OIDC identity provider `<x>-idp`, four mappers  |
//! | `federation.unlink`  | removes both of the above and the secret (one direction)               |
//! | `federation.record`  | the pair in table `federation_links` (or removes it: `remove: true`)   |
//! | `federation.verify`  | every test user of X logs in at P with the right claims (dive-verify)  |
//!
//! Beside the phases: [`drift`] (what differs from what these phases would create, in three
//! layers, using the same diff functions the phases apply) and [`secret_versions`] (which secret
//! version each side was given).
//!
//! Every direction phase takes `from` (X) and `to` (P), ISO 3166-1 alpha-3 codes in any case.
//! URLs and runtimes come from the instance registry ([`Instances`]), admin passwords from
//! `<code>/keycloak/admin-password`; the client secret lives in
//! `federation/<x>/<p>/client-secret`. The precheck refuses a run when either instance is not
//! registered ("instance FRA is not deployed: run `dive spoke deploy FRA` first"), when both are
//! the same, when neither is the hub, or when they are on different runtimes.
//!
//! URLs: a browser reaches X at its front URL ([`InstanceRecord::keycloak_url`]), which is also
//! the issuer of X's tokens; P calls X's token, JWKS and userinfo endpoints on the back channel:
//! the same URL on the local runtime, `https://dive-<x>-keycloak:8443` (the container on network
//! `dive-federation`) on the Docker runtime. Every URL is HTTPS: each Keycloak's certificate is
//! issued by the dive CA for the names it is reached by, and each trusts that CA for its own
//! outgoing calls.
//!
//! ```yaml
//! - id: client-usa-fra
//!   type: federation.client
//!   from: "${params.hub}"
//!   to: "${params.code}"
//! - id: idp-usa-fra
//!   type: federation.idp
//!   after: [client-usa-fra]
//!   from: "${params.hub}"
//!   to: "${params.code}"
//! ```

mod client;
pub mod drift;
mod forget;
mod idp;
mod record;
mod unlink;
mod verify;
mod versions;

pub use client::{FederationClient, SECRET_LENGTH};
pub(crate) use idp::idp_path;
pub use idp::{FederationIdp, MAPPER_TYPE};
pub use record::FederationRecord;
pub use unlink::FederationUnlink;
pub use verify::FederationVerify;
pub(crate) use verify::login_failure;
pub use versions::{SecretVersions, secret_versions};

use crate::context::Services;
pub(crate) use crate::keycloak::flag;
use dive_engine::{PhaseContext, PhaseError};
use dive_instances::{InstanceRecord, Instances, Role, normalize_code};
use dive_keycloak::{KeycloakAdmin, KeycloakError};
pub(crate) use dive_keycloak::{enc, realm_path};
use dive_runtime::{KEYCLOAK_HTTPS_PORT, PortSpec};
use serde::{Deserialize, Deserializer};

/// Secret holding the client secret of direction `from`→`to`.
pub fn client_secret_name(from: &str, to: &str) -> String {
    format!(
        "federation/{}/{}/client-secret",
        from.to_ascii_lowercase(),
        to.to_ascii_lowercase()
    )
}

/// `federation-<to>`: the client in X's realm that P's identity provider uses.
pub fn client_id(to: &str) -> String {
    format!("federation-{}", to.to_ascii_lowercase())
}

/// `<from>-idp`: the identity provider in P's realm that sends users to X.
pub fn idp_alias(from: &str) -> String {
    format!("{}-idp", from.to_ascii_lowercase())
}

/// Client attribute (and IdP config key) recording the secret version Keycloak was given.
pub const SECRET_VERSION_KEY: &str = "dive.secret.version";

/// Set on a client or identity provider when a link creates it: the run that did. A link
/// phase that fails after creating its object (`compensates_failure`) removes it on rollback
/// only when this says the rolled-back run made it, never one that was there before.
pub const CREATED_BY_KEY: &str = "dive.created.run";

/// Where P's server reaches X's Keycloak on the back channel (as the runtime of X addresses
/// one instance's service from another's).
pub fn backchannel_url(rec: &InstanceRecord) -> String {
    let port = PortSpec {
        name: "https".into(),
        container: KEYCLOAK_HTTPS_PORT,
        host: rec.ports().keycloak,
    };
    let (host, port) = rec.runtime.peer_addr(&rec.code_lower(), "keycloak", &port);
    format!("https://{host}:{port}")
}

/// Deletes the client `federation-<to>` from X's realm, if the realm and the client are there;
/// returns whether it deleted one.
pub(crate) async fn delete_client(
    admin: &KeycloakAdmin,
    x: &InstanceRecord,
    to: &str,
) -> Result<bool, KeycloakError> {
    let realm = x.realm();
    if admin.realm(&realm).await?.is_some()
        && let Some(id) = admin
            .client_by_client_id(&realm, &client_id(to))
            .await?
            .and_then(|c| c.id)
    {
        return admin.delete_client(&realm, &id).await;
    }
    Ok(false)
}

/// Deletes the identity provider `<from>-idp` (with its mappers) from P's realm, if the realm
/// and the provider are there; returns whether it deleted one.
pub(crate) async fn delete_idp(
    admin: &KeycloakAdmin,
    p: &InstanceRecord,
    from: &str,
) -> Result<bool, KeycloakError> {
    let realm = p.realm();
    if admin.realm(&realm).await?.is_none() {
        return Ok(false);
    }
    let path = realm_path(
        &realm,
        &format!("/identity-provider/instances/{}", enc(&idp_alias(from))),
    );
    admin.delete(&path).await
}

/// `${...}` references pass (resolved later); anything else must be a country code.
pub(crate) fn code_field<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.contains("${") {
        return Ok(s);
    }
    normalize_code(&s).map_err(serde::de::Error::custom)
}

pub(crate) fn code(s: &str) -> Result<String, PhaseError> {
    normalize_code(s).map_err(PhaseError::fatal)
}

fn deploy_hint(code: &str, hub: Option<&InstanceRecord>) -> String {
    match hub {
        None => {
            format!("run `dive hub deploy --code {code}` (or `dive spoke deploy {code}`) first")
        }
        Some(_) => format!("run `dive spoke deploy {code}` first"),
    }
}

/// The registered instance `code`, or an error saying how to deploy it.
pub(crate) async fn instance(reg: &Instances, code: &str) -> Result<InstanceRecord, String> {
    match reg.get(code).await {
        Ok(Some(rec)) => Ok(rec),
        Ok(None) => {
            let hub = reg.hub().await.ok().flatten();
            Err(format!(
                "instance {code} is not deployed: {}",
                deploy_hint(code, hub.as_ref())
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Both ends of a direction, registered, different, one of them the hub.
pub(crate) async fn pair(
    reg: &Instances,
    from: &str,
    to: &str,
) -> Result<(InstanceRecord, InstanceRecord), String> {
    let from = normalize_code(from)?;
    let to = normalize_code(to)?;
    if from == to {
        return Err(format!(
            "federation of {from} with itself: `from` and `to` must differ"
        ));
    }
    let x = instance(reg, &from).await?;
    let p = instance(reg, &to).await?;
    if x.role != Role::Hub && p.role != Role::Hub {
        return Err(format!(
            "neither {from} nor {to} is the hub: federation links the hub with a spoke"
        ));
    }
    if x.runtime != p.runtime {
        return Err(format!(
            "{from} runs on the {} runtime and {to} on the {} runtime: federation links instances \
             on one runtime (each side's Keycloak must reach the other's on the back channel)",
            x.runtime, p.runtime
        ));
    }
    Ok((x, p))
}

/// [`pair`] as a phase error (fatal: the operator must deploy first).
pub(crate) async fn resolve(
    ctx: &PhaseContext,
    from: &str,
    to: &str,
) -> Result<(InstanceRecord, InstanceRecord), PhaseError> {
    let reg = Services::of(ctx)?.instances();
    pair(reg, &code(from)?, &code(to)?)
        .await
        .map_err(PhaseError::fatal)
}

/// Logs in to `rec`'s Keycloak as the bootstrap admin.
pub(crate) async fn admin(
    ctx: &PhaseContext,
    rec: &InstanceRecord,
) -> Result<KeycloakAdmin, PhaseError> {
    let services = Services::of(ctx)?;
    admin_with(services.secrets(), services.trust(), rec).await
}

/// [`admin`] with the secret store and the dive CA at hand.
pub(crate) async fn admin_with(
    store: &dive_secrets::SecretStore,
    trust: &dive_tls::Trust,
    rec: &InstanceRecord,
) -> Result<KeycloakAdmin, PhaseError> {
    Ok(dive_verify::admin_login(
        store,
        trust,
        &format!("keycloak {}", rec.code),
        &rec.code,
        &rec.keycloak_url(),
    )
    .await?)
}

/// The breaker of a registered instance's Keycloak, `keycloak:<CODE>` (shared with
/// `instance.reachable`), or `None` while `code` is still a reference.
pub(crate) fn breaker(code: &str) -> Option<String> {
    normalize_code(code).ok().map(|c| format!("keycloak:{c}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design() {
        assert_eq!(
            client_secret_name("USA", "Fra"),
            "federation/usa/fra/client-secret"
        );
        assert_eq!(client_id("FRA"), "federation-fra");
        assert_eq!(idp_alias("USA"), "usa-idp");
        assert_eq!(breaker("fra").as_deref(), Some("keycloak:FRA"));
        assert_eq!(breaker("${params.code}"), None);
        assert_eq!(realm_path("dive-fra", "/x"), "/admin/realms/dive-fra/x");
    }
}
