//! Drift detection for one hub–spoke pair, in three layers:
//!
//! - **runtime**: every service of both instances is running and answers its readiness check;
//! - **config**: in both directions, the client, its secret and default scope, the identity
//!   provider, its four mappers, its first-broker-login flow and the `dive-attributes` scope are
//!   what `federation-link` would create — compared with the same functions the link phases use
//!   to decide what to correct, so drift and repair never disagree. Keycloak shows a client's
//!   secret to admins (compared with the store's latest version, never shown) but masks an
//!   identity provider's, so the provider is compared through the version marker
//!   `dive.secret.version` the link wrote next to it;
//! - **live**: one brokered login in each direction (the first test user).
//!
//! Every finding names its layer, the instance, the object and how it differs. Nothing is
//! changed: `dive federation link CODE` repairs what is found.

use super::client::{attributes_scope_id, diff_client};
use super::idp::{FIRST_BROKER_LOGIN, diff_idp, diff_mappers, unlinked_users};
use super::{SECRET_VERSION_KEY, admin_with, client_secret_name};
use crate::keycloak::SCOPE_NAME;
use crate::keycloak::client_scope::mapper_differences;
use dive_instances::InstanceRecord;
use dive_instances::health::service_health;
use dive_keycloak::KeycloakAdmin;
use dive_runtime::Runtime;
use dive_secrets::SecretStore;
use dive_tls::Trust;
use dive_verify::{Endpoint, verify_direction};
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    Runtime,
    Config,
    Live,
}

/// One difference between what runs and what dive wants.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub layer: Layer,
    /// The instance the object lives on (upper case).
    pub instance: String,
    /// What differs, e.g. `identity provider usa-idp in realm dive-fra`.
    pub object: String,
    /// How it differs.
    pub difference: String,
}

/// One direction's live check.
#[derive(Debug, Clone, Serialize)]
pub struct LiveCheck {
    pub from: String,
    pub to: String,
    pub ok: bool,
    pub latency_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    pub hub: String,
    pub spoke: String,
    pub drifted: bool,
    pub findings: Vec<Finding>,
    pub live: Vec<LiveCheck>,
}

/// One instance of the pair and its runtime (or why the runtime could not be reached).
pub struct Side {
    pub rec: InstanceRecord,
    pub runtime: Result<Arc<dyn Runtime>, String>,
}

/// Checks the pair in all three layers; only reads (and logs in once each way).
pub async fn detect(secrets: &SecretStore, trust: &Trust, hub: &Side, spoke: &Side) -> DriftReport {
    let mut findings = Vec::new();
    for side in [hub, spoke] {
        findings.extend(runtime_layer(trust, side).await);
    }
    for (x, p) in [(&hub.rec, &spoke.rec), (&spoke.rec, &hub.rec)] {
        findings.extend(config_layer(secrets, trust, x, p).await);
    }
    let (a, b) = futures::join!(
        live(secrets, trust, &hub.rec, &spoke.rec),
        live(secrets, trust, &spoke.rec, &hub.rec)
    );
    let mut checks = Vec::new();
    for (check, finding) in [a, b] {
        checks.push(check);
        findings.extend(finding);
    }
    // An instance that cannot be reached is reported once, not once per direction.
    let mut seen = std::collections::HashSet::new();
    findings.retain(|f| seen.insert((f.instance.clone(), f.object.clone(), f.difference.clone())));
    DriftReport {
        hub: hub.rec.code.clone(),
        spoke: spoke.rec.code.clone(),
        drifted: !findings.is_empty(),
        findings,
        live: checks,
    }
}

async fn runtime_layer(trust: &Trust, side: &Side) -> Vec<Finding> {
    let rt = side.runtime.as_deref().map_err(String::as_str);
    service_health(rt, trust, &side.rec)
        .await
        .into_iter()
        .filter(|s| !s.is_ok())
        .map(|s| Finding {
            layer: Layer::Runtime,
            instance: side.rec.code.clone(),
            object: format!("service {} ({} runtime)", s.name, side.rec.runtime),
            difference: format!(
                "{}, {} (wanted: running, healthy){}",
                s.state,
                s.health,
                s.error.map(|e| format!(": {e}")).unwrap_or_default()
            ),
        })
        .collect()
}

/// Findings of one direction X→P: the client side in X, the provider side in P.
async fn config_layer(
    secrets: &SecretStore,
    trust: &Trust,
    x: &InstanceRecord,
    p: &InstanceRecord,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let secret_name = client_secret_name(&x.code, &p.code);
    let stored = match secrets.get(&secret_name).await {
        Ok(Some((value, version))) => {
            Some((zeroize::Zeroizing::new(value.expose().to_string()), version))
        }
        Ok(None) => {
            out.push(config(
                x,
                &format!("secret {secret_name}"),
                "missing from the store".into(),
            ));
            None
        }
        Err(e) => {
            out.push(config(
                x,
                &format!("secret {secret_name}"),
                format!("could not be read: {e}"),
            ));
            None
        }
    };
    let Some((secret, version)) = stored else {
        return out;
    };
    match admin_with(secrets, trust, x).await {
        Ok(admin) => out.extend(client_side(&admin, x, p, &secret, version).await),
        Err(e) => out.push(config(
            x,
            &format!("realm {}", x.realm()),
            format!("could not be checked: {e}"),
        )),
    }
    match admin_with(secrets, trust, p).await {
        Ok(admin) => {
            out.extend(provider_side(&admin, x, p, version).await);
            if let Ok(home) = admin_with(secrets, trust, x).await {
                out.extend(links(&home, &admin, x, p).await);
            }
        }
        Err(e) => out.push(config(
            p,
            &format!("realm {}", p.realm()),
            format!("could not be checked: {e}"),
        )),
    }
    out
}

fn config(on: &InstanceRecord, object: &str, difference: String) -> Finding {
    Finding {
        layer: Layer::Config,
        instance: on.code.clone(),
        object: object.to_string(),
        difference,
    }
}

/// In X's realm: the `dive-attributes` scope and client `federation-<p>`.
async fn client_side(
    admin: &KeycloakAdmin,
    x: &InstanceRecord,
    p: &InstanceRecord,
    secret: &str,
    version: u32,
) -> Vec<Finding> {
    let realm = x.realm();
    let mut out = Vec::new();
    let scope = format!("client scope {SCOPE_NAME} in realm {realm}");
    match admin.client_scope_by_name(&realm, SCOPE_NAME).await {
        Ok(Some(s)) => out.extend(
            mapper_differences(&s)
                .into_iter()
                .map(|d| config(x, &scope, d)),
        ),
        Ok(None) => out.push(config(x, &scope, "missing".into())),
        Err(e) => out.push(config(x, &scope, format!("could not be read: {e}"))),
    }
    let want = super::client::wanted_for(x, p, version);
    let object = format!("client {} in realm {realm}", want.client_id);
    let scope_id = match attributes_scope_id(admin, &realm).await {
        Ok(id) => id.unwrap_or_default(),
        Err(e) => {
            out.push(config(x, &object, format!("could not be read: {e}")));
            return out;
        }
    };
    match diff_client(admin, &realm, &want, secret, &scope_id).await {
        Ok(None) => out.push(config(x, &object, "missing".into())),
        Ok(Some(d)) => {
            let marker = d
                .corrected
                .attributes
                .as_ref()
                .and_then(|a| a.get(SECRET_VERSION_KEY).cloned());
            if d.secret_differs {
                out.push(config(
                    x,
                    &object,
                    format!(
                        "its secret is not version {version} of {} (changed outside dive)",
                        client_secret_name(&x.code, &p.code)
                    ),
                ));
            }
            let settings: Vec<&str> = d
                .fixed
                .iter()
                .copied()
                .filter(|f| *f != "attributes")
                .collect();
            if !settings.is_empty() {
                out.push(config(
                    x,
                    &object,
                    format!("settings differ: {}", settings.join(", ")),
                ));
            }
            if d.fixed.contains(&"attributes") {
                out.push(config(
                    x,
                    &object,
                    format!(
                        "attributes differ ({SECRET_VERSION_KEY} {}; the store has version {version})",
                        marker.as_deref().unwrap_or("absent")
                    ),
                ));
            }
            if d.scope_missing {
                out.push(config(
                    x,
                    &object,
                    format!("{SCOPE_NAME} is not a default client scope"),
                ));
            }
        }
        Err(e) => out.push(config(x, &object, format!("could not be read: {e}"))),
    }
    out
}

/// In P's realm: provider `<x>-idp`, its mappers and its first-broker-login flow.
async fn provider_side(
    admin: &KeycloakAdmin,
    x: &InstanceRecord,
    p: &InstanceRecord,
    version: u32,
) -> Vec<Finding> {
    let realm = p.realm();
    let (alias, top, cfg) = super::idp::wanted_for(x, p, version);
    let object = format!("identity provider {alias} in realm {realm}");
    let mut out = Vec::new();
    match diff_idp(admin, &realm, &alias, &top, &cfg).await {
        Ok(None) => {
            out.push(config(p, &object, "missing".into()));
            return out;
        }
        Ok(Some(d)) => {
            if d.stale_secret {
                out.push(config(
                    p,
                    &object,
                    format!(
                        "was given secret version {}; the store has version {version}",
                        d.corrected["config"][SECRET_VERSION_KEY]
                            .as_str()
                            .unwrap_or("(none)")
                    ),
                ));
            }
            let settings: Vec<&str> = d
                .fixed
                .iter()
                .map(String::as_str)
                .filter(|f| *f != format!("config.{SECRET_VERSION_KEY}"))
                .collect();
            if !settings.is_empty() {
                out.push(config(
                    p,
                    &object,
                    format!("settings differ: {}", settings.join(", ")),
                ));
            }
        }
        Err(e) => {
            out.push(config(p, &object, format!("could not be read: {e}")));
            return out;
        }
    }
    match diff_mappers(admin, &realm, &alias).await {
        Ok(m) => {
            for a in m.missing {
                out.push(config(
                    p,
                    &format!("mapper {a} of {alias} in realm {realm}"),
                    "missing".into(),
                ));
            }
            for (a, _, _) in m.differing {
                out.push(config(
                    p,
                    &format!("mapper {a} of {alias} in realm {realm}"),
                    "settings differ (type, claim, user attribute or sync mode)".into(),
                ));
            }
        }
        Err(e) => out.push(config(
            p,
            &object,
            format!("mappers could not be read: {e}"),
        )),
    }
    let flows: Result<Vec<Value>, _> = admin
        .get(&super::realm_path(&realm, "/authentication/flows"))
        .await;
    let flow = format!("authentication flow `{FIRST_BROKER_LOGIN}` in realm {realm}");
    match flows {
        Ok(f) if f.iter().any(|f| f["alias"] == FIRST_BROKER_LOGIN) => {}
        Ok(_) => out.push(config(p, &flow, format!("missing (used by {alias})"))),
        Err(e) => out.push(config(p, &flow, format!("could not be read: {e}"))),
    }
    out
}

/// Copies of X's users in P's realm that lost their link to `<x>-idp`.
async fn links(
    home: &KeycloakAdmin,
    admin: &KeycloakAdmin,
    x: &InstanceRecord,
    p: &InstanceRecord,
) -> Vec<Finding> {
    let alias = super::idp_alias(&x.code);
    match unlinked_users(home, x, admin, &p.realm()).await {
        Ok(users) => users
            .into_iter()
            .map(|u| {
                config(
                    p,
                    &format!("user {} in realm {}", u.username, p.realm()),
                    format!("not linked to {alias} (its link went with a deleted provider): its logins from {} fail", x.code),
                )
            })
            .collect(),
        Err(e) => vec![config(p, &format!("users of {} in realm {}", x.code, p.realm()), format!("could not be read: {e}"))],
    }
}

/// One login from X at P.
async fn live(
    secrets: &SecretStore,
    trust: &Trust,
    x: &InstanceRecord,
    p: &InstanceRecord,
) -> (LiveCheck, Option<Finding>) {
    let report = verify_direction(
        secrets,
        trust,
        &Endpoint::from(x),
        &Endpoint::from(p),
        Some(1),
    )
    .await;
    let check = LiveCheck {
        from: x.code.clone(),
        to: p.code.clone(),
        ok: report.ok,
        latency_ms: report.latency_ms,
    };
    let finding = (!report.ok).then(|| {
        let why = report.failure().unwrap_or_default();
        Finding {
            layer: Layer::Live,
            instance: p.code.clone(),
            object: format!("login of a {} user at {}", x.code, p.code),
            difference: format!("failed: {why}"),
        }
    });
    (check, finding)
}
