//! TLS for the instances: the local CA of the dive home (kept in the secret store as
//! `ca/authority`, created on first use) and the phase type `tls.certificate`, which gives an
//! instance's Keycloak a certificate for the names it is reached by.
//!
//! ```yaml
//! - id: certificate
//!   type: tls.certificate
//!   after: [instance]
//!   instance: "${params.code}"
//! ```
//! Output `{name, version, issued, names, not_after}`: the certificate and its key are the
//! secret `<code>/keycloak/tls` (a PEM bundle), which the `service` phase's Keycloak template
//! reads (`tls_secret`). Names: `127.0.0.1`, `localhost`, and the name partners reach it by on
//! its runtime (its container name on Docker). Lifetime: the `cert_lifetime` setting
//! ([`crate::Config`]).
//!
//! Idempotency: a certificate that still serves (same CA, same names, more than a third of its
//! lifetime left) is kept (`issued: false`); otherwise a new one is stored as the next version.
//! Compensation: none, on purpose — a newer certificate is as good as the one it replaced, and
//! a Keycloak started with it must keep it; the secret goes when the instance is reset.

use crate::context::Services;
use dive_engine::{
    Action, Change, KNOWN_AFTER_APPLY, Phase, PhaseContext, PhaseError, PhasePlan, SENSITIVE,
    async_trait, typetag,
};
use dive_instances::{InstanceRecord, normalize_code};
use dive_runtime::{KEYCLOAK_HTTPS_PORT, PortSpec};
use dive_secrets::{Secret, SecretError, SecretStore};
use dive_tls::{Authority, Certificate, TlsError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The secret holding the dive home's CA (certificate and key, PEM).
pub const AUTHORITY_SECRET: &str = "ca/authority";

/// The secret holding an instance's Keycloak certificate and key.
pub fn certificate_secret(code: &str) -> String {
    format!("{}/keycloak/tls", code.to_ascii_lowercase())
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Secrets(#[from] SecretError),
    #[error("secret `{AUTHORITY_SECRET}`: {0}")]
    Tls(#[from] TlsError),
}

/// The dive home's CA, if it has one.
pub async fn existing_authority(store: &SecretStore) -> Result<Option<Authority>, CaError> {
    match store.get(AUTHORITY_SECRET).await? {
        Some((bundle, _)) => Ok(Some(Authority::from_pem(bundle.expose())?)),
        None => Ok(None),
    }
}

/// A new CA, not stored.
pub fn new_authority() -> Result<Authority, CaError> {
    Ok(Authority::generate(&format!(
        "created {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M")
    ))?)
}

/// The dive home's CA, created (and stored) on first use; concurrent first uses agree on one.
pub async fn authority(store: &SecretStore) -> Result<Authority, CaError> {
    if let Some(authority) = existing_authority(store).await? {
        return Ok(authority);
    }
    let fresh = new_authority()?;
    let (bundle, _, created) = store
        .ensure_value(AUTHORITY_SECRET, || Secret::new(fresh.to_pem().as_str()))
        .await?;
    if created {
        tracing::info!("created the local certificate authority");
    }
    Ok(Authority::from_pem(bundle.expose())?)
}

/// An instance's current certificate and its version, if it has one.
pub async fn certificate(
    store: &SecretStore,
    code: &str,
) -> Result<Option<(Certificate, u32)>, CaError> {
    match store.get(&certificate_secret(code)).await? {
        Some((bundle, version)) => Ok(Some((Certificate::from_pem(bundle.expose())?, version))),
        None => Ok(None),
    }
}

/// The names an instance's Keycloak is reached by: `127.0.0.1`, `localhost`, and the name a
/// partner's Keycloak uses on its runtime (its container name on Docker).
pub fn names(rec: &InstanceRecord) -> Vec<String> {
    let https = PortSpec {
        name: "https".into(),
        container: KEYCLOAK_HTTPS_PORT,
        host: rec.ports().keycloak,
    };
    let (peer, _) = rec.runtime.peer_addr(&rec.code_lower(), "keycloak", &https);
    let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    if !names.contains(&peer) {
        names.push(peer);
    }
    names
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    /// ISO 3166-1 alpha-3 code of a registered instance, any case.
    pub instance: String,
}

#[typetag::serde(name = "tls.certificate")]
#[async_trait]
impl Phase for TlsCertificate {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let services = Services::of(ctx)?;
        let code = normalize_code(&self.instance).map_err(|e| PhaseError::fatal(e.to_string()))?;
        let rec = services.instances().get(&code).await?.ok_or_else(|| {
            PhaseError::fatal(format!(
                "instance {code} is not registered (add an instance.register phase before this one)"
            ))
        })?;
        let names = names(&rec);
        let store = services.secrets();
        let name = certificate_secret(&code);
        let authority = services.authority();
        let lifetime = services.cert_lifetime();
        // One that does not parse is replaced like one that no longer serves.
        let current = certificate(store, &code).await.ok().flatten();
        let (cert, version, issued) = match current {
            Some((cert, version)) if cert.serves(authority, &names, lifetime) => {
                (cert, version, false)
            }
            _ => {
                let cert = authority
                    .issue(&names, lifetime)
                    .map_err(|e| PhaseError::fatal(e.to_string()))?;
                let version = store
                    .put(&name, &Secret::new(cert.to_pem().as_str()))
                    .await?;
                ctx.note(format!(
                    "issued a certificate for {} (valid until {})",
                    names.join(", "),
                    cert.not_after().format("%Y-%m-%d")
                ));
                (cert, version, true)
            }
        };
        Ok(json!({
            "name": name,
            "version": version,
            "issued": issued,
            "names": cert.names(),
            "not_after": cert.not_after(),
        }))
    }

    /// A certificate that still serves stays; otherwise one would be issued (for a new
    /// instance, for names its registration decides). A CA that does not exist yet would be
    /// created first.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let services = Services::of(ctx)?;
        let code = normalize_code(&self.instance).map_err(|e| PhaseError::fatal(e.to_string()))?;
        let name = certificate_secret(&code);
        let lifetime = services.cert_lifetime();
        let mut changes = Vec::new();
        if services.authority_planned() {
            changes.push(
                Change::new(None, format!("secret {AUTHORITY_SECRET}"), Action::Create)
                    .field("value", Value::Null, SENSITIVE)
                    .because("the dive home's certificate authority"),
            );
        }
        let rec = services.instances().get(&code).await?;
        let current = certificate(services.secrets(), &code).await.ok().flatten();
        let wanted = rec.as_ref().map(names);
        if let (Some(names), Some((cert, version))) = (&wanted, &current)
            && cert.serves(services.authority(), names, lifetime)
        {
            return Ok(PhasePlan::changes(
                changes,
                json!({ "name": name, "version": version, "issued": false,
                        "names": cert.names(), "not_after": cert.not_after() }),
            ));
        }
        let not_after =
            chrono::Utc::now() + chrono::Duration::from_std(lifetime).unwrap_or_default();
        let new = json!({
            "names": wanted.clone().map_or(KNOWN_AFTER_APPLY.into(), Value::from),
            "not_after": not_after.format("%Y-%m-%d").to_string(),
        });
        let object = format!("certificate {name}");
        changes.push(match &current {
            None => Change::new(Some(&code), object, Action::Create).diff(&Value::Null, &new),
            Some((cert, _)) => Change::new(Some(&code), object, Action::Update)
                .diff(
                    &json!({ "names": cert.names(),
                             "not_after": cert.not_after().format("%Y-%m-%d").to_string() }),
                    &new,
                )
                .because("it no longer serves: another CA or other names, or under a third of its lifetime left"),
        });
        Ok(PhasePlan::changes(
            changes,
            json!({ "name": name, "version": KNOWN_AFTER_APPLY, "issued": true,
                    "names": new["names"], "not_after": KNOWN_AFTER_APPLY }),
        ))
    }
}
