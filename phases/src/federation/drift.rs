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

use super::client::client_changes;
use super::idp::{FIRST_BROKER_LOGIN, provider_changes};
use super::{admin_with, client_secret_name};
use crate::keycloak::client_scope::mapper_differences;
use crate::keycloak::{SCOPE_NAME, profile_changes};
use dive_engine::dry_run::FieldChange;
use dive_engine::{Action, Change};
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
    /// The settings that differ, with the value found and the one `federation link` would set
    /// (secrets only as `(sensitive)`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

impl Finding {
    /// A configuration finding from what the link would change (its plan: the same
    /// computation, so every finding is a planned change).
    fn planned(change: Change) -> Finding {
        let difference = match change.action {
            Action::Create => "missing".to_string(),
            Action::Delete => "should not be there".to_string(),
            _ if !change.fields.is_empty() => format!(
                "differs: {}",
                change
                    .fields
                    .iter()
                    .map(|f| f.field.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => "differs".to_string(),
        };
        let difference = match &change.reason {
            Some(reason) => format!("{difference} ({reason})"),
            None => difference,
        };
        Finding {
            layer: Layer::Config,
            instance: change.instance.unwrap_or_default(),
            object: change.object,
            difference,
            fields: change.fields,
        }
    }
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
    for side in [hub, spoke] {
        findings.extend(profile_side(secrets, trust, &side.rec).await);
    }
    for (x, p) in [(&hub.rec, &spoke.rec), (&spoke.rec, &hub.rec)] {
        findings.extend(config_layer(secrets, trust, x, p).await);
    }
    let (a, b) = futures::join!(
        live(secrets, trust, &hub.rec, &spoke.rec),
        live(secrets, trust, &spoke.rec, &hub.rec)
    );
    let mut checks = Vec::new();
    let mut failed = Vec::new();
    for (check, finding) in [a, b] {
        checks.push(check);
        failed.extend(finding);
    }
    // A failed login is explained by what the configuration layer found, when it found
    // anything: the login's own symptom (an error page, a refused code) only hints at it.
    let causes: Vec<String> = findings
        .iter()
        .filter(|f| f.layer != Layer::Live)
        .map(|f| format!("{} on {}", f.object, f.instance))
        .collect();
    for mut f in failed {
        if !causes.is_empty() {
            f.difference = format!("failed; cause: {}", causes.join("; "));
        }
        findings.push(f);
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
            fields: Vec::new(),
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
    let (home, partner) = (
        admin_with(secrets, trust, x).await,
        admin_with(secrets, trust, p).await,
    );
    match &home {
        Ok(admin) => out.extend(client_side(admin, x, p, &secret, version).await),
        Err(e) => out.push(config(
            x,
            &format!("realm {}", x.realm()),
            format!("could not be checked: {e}"),
        )),
    }
    match (&partner, &home) {
        (Ok(admin), Ok(home)) => out.extend(provider_side(admin, home, x, p, version).await),
        (Err(e), _) => out.push(config(
            p,
            &format!("realm {}", p.realm()),
            format!("could not be checked: {e}"),
        )),
        (Ok(_), Err(_)) => {}
    }
    out
}

fn config(on: &InstanceRecord, object: &str, difference: String) -> Finding {
    Finding {
        layer: Layer::Config,
        instance: on.code.clone(),
        object: object.to_string(),
        difference,
        fields: Vec::new(),
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
    let object = format!("client {} in realm {realm}", super::client_id(&p.code));
    match client_changes(admin, x, p, Some((secret, version))).await {
        Ok(planned) => out.extend(planned.changes.into_iter().map(Finding::planned)),
        Err(e) => out.push(config(x, &object, format!("could not be read: {e}"))),
    }
    out
}

/// In P's realm: provider `<x>-idp`, its mappers, the links of X's users to it (`home` is X's
/// Keycloak), and its first-broker-login flow.
async fn provider_side(
    admin: &KeycloakAdmin,
    home: &KeycloakAdmin,
    x: &InstanceRecord,
    p: &InstanceRecord,
    version: u32,
) -> Vec<Finding> {
    let realm = p.realm();
    let alias = super::idp_alias(&x.code);
    let mut out = match provider_changes(admin, home, x, p, version).await {
        Ok(planned) => planned.changes.into_iter().map(Finding::planned).collect(),
        Err(e) => vec![config(
            p,
            &format!("identity provider {alias} in realm {realm}"),
            format!("could not be read: {e}"),
        )],
    };
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

/// The DIVE attributes of the instance's user profile: a removed or changed declaration makes
/// Keycloak drop the attribute from every user, so it never reaches a token.
async fn profile_side(secrets: &SecretStore, trust: &Trust, rec: &InstanceRecord) -> Vec<Finding> {
    let realm = rec.realm();
    let object = format!("user profile of realm {realm}");
    let admin = match admin_with(secrets, trust, rec).await {
        Ok(admin) => admin,
        Err(e) => return vec![config(rec, &object, format!("could not be checked: {e}"))],
    };
    match admin.user_profile(&realm).await {
        Ok(profile) => match profile_changes(&rec.code, &realm, &profile) {
            Ok(planned) => planned.changes.into_iter().map(Finding::planned).collect(),
            Err(e) => vec![config(rec, &object, e)],
        },
        Err(e) => vec![config(rec, &object, format!("could not be read: {e}"))],
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
            fields: Vec::new(),
        }
    });
    (check, finding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_planned_change_becomes_a_finding_with_its_values() {
        let f = Finding::planned(
            Change::new(
                Some("FRA"),
                "identity provider usa-idp in realm dive-fra",
                Action::Update,
            )
            .field("enabled", false, true),
        );
        assert_eq!(f.layer, Layer::Config);
        assert_eq!(f.instance, "FRA");
        assert_eq!(f.difference, "differs: enabled");
        assert_eq!(f.fields[0].old, json!(false));
        let missing = Finding::planned(Change::new(Some("USA"), "client x", Action::Create));
        assert_eq!(missing.difference, "missing");
        let why = Finding::planned(
            Change::new(Some("FRA"), "user u", Action::Update).because("not linked to usa-idp"),
        );
        assert_eq!(why.difference, "differs (not linked to usa-idp)");
    }
}
