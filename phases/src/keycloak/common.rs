//! What every `keycloak.*` phase shares: the instance code, the realm, the admin login.

use crate::context::Services;
use dive_engine::dry_run::is_known_after_apply;
use dive_engine::{Action, Change, PhaseContext, PhaseError};
use dive_keycloak::{KeycloakAdmin, default_realm};
use serde::{Deserialize, Deserializer};

/// Checks `instance` when the workflow is read: three letters, or a reference that the engine
/// resolves later (and that [`Target::new`] checks when the phase runs).
pub(crate) fn instance_code<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.contains("${") || is_code(&s) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "instance `{s}` is not an ISO 3166-1 alpha-3 code (three letters, e.g. FRA)"
        )))
    }
}

fn is_code(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_alphabetic())
}

/// An optional realm name: not empty, no `/`.
pub(crate) fn realm_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    match &s {
        Some(r) if r.trim().is_empty() || r.contains('/') => Err(serde::de::Error::custom(
            format!("realm `{r}` must be a non-empty name without `/`"),
        )),
        _ => Ok(s),
    }
}

/// The resolved instance, realm and URL a phase works on.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `FRA`: output and claims.
    pub upper: String,
    /// `fra`: names.
    pub lower: String,
    pub realm: String,
    pub url: String,
}

impl Target {
    pub fn new(instance: &str, url: &str, realm: Option<&str>) -> Result<Target, PhaseError> {
        if !is_code(instance) {
            return Err(PhaseError::fatal(format!(
                "instance `{instance}` is not an ISO 3166-1 alpha-3 code (three letters)"
            )));
        }
        if url.contains("${") {
            return Err(PhaseError::fatal(format!(
                "url: reference `{url}` was not resolved"
            )));
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(PhaseError::fatal(format!(
                "url `{url}` is not an http(s) URL of a Keycloak server"
            )));
        }
        Ok(Target {
            upper: instance.to_ascii_uppercase(),
            lower: instance.to_ascii_lowercase(),
            realm: realm
                .map(str::to_string)
                .unwrap_or_else(|| default_realm(instance)),
            url: url.to_string(),
        })
    }

    /// `keycloak:<CODE>`, or `None` when the instance is still a reference.
    pub fn breaker_key(instance: &str) -> Option<String> {
        is_code(instance).then(|| format!("keycloak:{}", instance.to_ascii_uppercase()))
    }

    /// Logs in as the bootstrap admin with the password from the secret store
    /// ([`dive_verify::admin_login`]).
    pub async fn admin(&self, ctx: &PhaseContext) -> Result<KeycloakAdmin, PhaseError> {
        let services = Services::of(ctx)?;
        Ok(dive_verify::admin_login(
            services.secrets(),
            services.trust(),
            &format!("keycloak {}", self.upper),
            &self.upper,
            &self.url,
        )
        .await?)
    }

    /// Checks that the realm exists, so that a phase run before `keycloak.realm` says so.
    pub async fn require_realm(&self, admin: &KeycloakAdmin) -> Result<(), PhaseError> {
        if admin.realm(&self.realm).await?.is_none() {
            return Err(PhaseError::fatal(format!(
                "{}: realm `{}` does not exist (add a keycloak.realm phase before this one)",
                admin.name(),
                self.realm
            )));
        }
        Ok(())
    }
}

/// What a `keycloak.*` phase plans against (`--dry-run`).
pub(crate) enum Live {
    /// Nothing of it exists yet — its URL is only known after apply (the instance is new: the
    /// run allocates its port block) or its realm does not exist (an earlier phase of the run
    /// creates it) — so everything the phase ensures would be created.
    New,
    /// Keycloak cannot be read now (it is stopped, say, and the run would start it first):
    /// what would change is known after apply.
    Unknown(Change),
    /// The live Keycloak, to compare with.
    Admin(KeycloakAdmin),
}

impl Target {
    /// The target and what to plan against: like [`Target::new`], but a URL that is only
    /// known after apply means a new instance ([`Live::New`]).
    pub async fn live(
        instance: &str,
        url: &str,
        realm: Option<&str>,
        ctx: &PhaseContext,
    ) -> Result<(Target, Live), PhaseError> {
        let placeholder = is_known_after_apply(url);
        let t = Target::new(
            instance,
            if placeholder { "https://planned" } else { url },
            realm,
        )?;
        if placeholder {
            return Ok((t, Live::New));
        }
        let live = match t.admin(ctx).await {
            Ok(admin) => match admin.realm(&t.realm).await {
                Ok(Some(_)) => Live::Admin(admin),
                Ok(None) => Live::New,
                Err(e) => Live::Unknown(t.unreadable(&ctx.phase_id, e)),
            },
            Err(e) => Live::Unknown(t.unreadable(&ctx.phase_id, e)),
        };
        Ok((t, live))
    }

    /// What phase `phase` manages in the realm, when Keycloak cannot be read.
    fn unreadable(&self, phase: &str, why: impl std::fmt::Display) -> Change {
        self.change(
            format!("what phase `{phase}` ensures"),
            Action::KnownAfterApply,
        )
        .because(format!("Keycloak cannot be read now: {why}"))
    }

    /// A change of an object of this target's realm, e.g. `client dive-verify`.
    pub fn change(&self, object: impl std::fmt::Display, action: Action) -> Change {
        Change::new(
            Some(&self.upper),
            format!("{object} in realm {}", self.realm),
            action,
        )
    }
}

/// A representation as JSON, for a plan's old and new values: a client's `secret` is masked.
pub(crate) fn to_json(rep: &impl serde::Serialize) -> serde_json::Value {
    let mut value = serde_json::to_value(rep).unwrap_or_default();
    if let Some(secret) = value.get_mut("secret").filter(|s| !s.is_null()) {
        *secret = dive_engine::SENSITIVE.into();
    }
    value
}

/// Whether a compensation's `output` says the run created or did something (`key: true`).
pub(crate) fn flag(output: &serde_json::Value, key: &str) -> bool {
    output.get(key).and_then(serde_json::Value::as_bool) == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_normalise_case_and_default_the_realm() {
        let t = Target::new("fRa", "http://127.0.0.1:8080", None).unwrap();
        assert_eq!(
            (t.upper.as_str(), t.lower.as_str(), t.realm.as_str()),
            ("FRA", "fra", "dive-fra")
        );
        let t = Target::new("USA", "http://x", Some("other")).unwrap();
        assert_eq!(t.realm, "other");
        assert!(Target::new("FR", "http://x", None).is_err());
        assert!(Target::new("FRA", "${phases.k.output.url}", None).is_err());
        assert!(Target::new("FRA", "127.0.0.1:8080", None).is_err());
        assert_eq!(Target::breaker_key("gbr").as_deref(), Some("keycloak:GBR"));
        assert_eq!(Target::breaker_key("${params.code}"), None);
    }

    #[test]
    fn keycloak_errors_become_phase_errors_that_keep_retryability_and_retry_after() {
        let status = |s: u16| dive_keycloak::KeycloakError::Status {
            target: "k".into(),
            method: "GET".into(),
            path: "/".into(),
            status: reqwest::StatusCode::from_u16(s).unwrap(),
            message: String::new(),
            retry_after: (s == 503).then(|| std::time::Duration::from_secs(7)),
        };
        let phase: PhaseError = status(503).into();
        assert!(phase.is_retryable());
        assert_eq!(phase.retry_after(), Some(std::time::Duration::from_secs(7)));
        let phase: PhaseError = status(401).into();
        assert!(!phase.is_retryable());
    }
}
