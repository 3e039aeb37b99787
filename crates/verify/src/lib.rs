//! dive-verify: federation verification by real logins. A federation link is only proven when a
//! user of one instance logs in at the other through the identity provider and arrives with the
//! right claims: a Keycloak that merely lists the identity provider, or answers its discovery
//! document, proves nothing.
//!
//! [`brokered_login`] is a scripted browser: its own cookie jar, no automatic redirects (every
//! hop is looked at), a 10 s timeout on every request (5 s to connect). It starts an authorization-code flow with
//! PKCE S256 on the public client `dive-verify` at the *target* realm with
//! `kc_idp_hint=<home>-idp`, follows the redirects to the *home* Keycloak's login form, posts the
//! user's credentials there, follows the redirects back through the target's broker endpoint
//! (submitting an intermediate form such as first-broker-login's "review profile" as it is
//! pre-filled), stops at the redirect to `http://127.0.0.1/dive-verify/callback` without
//! requesting it, checks `state`, exchanges the code (with the PKCE verifier) at the target's
//! token endpoint and validates the ID token: RS256 signature against the target realm's JWKS
//! (by `kid`), `iss`, `aud` ∋ `dive-verify`, `nonce`, `exp`.
//!
//! [`verify_direction`] does that for the test users of one instance at another (all of them,
//! side by side, or the first few: drift's live layer logs in once) and compares the four DIVE
//! claims with the user's attributes at home (read through the admin API); [`record`] stores the
//! result in `federation_verifications`. No engine types: the phase type `federation.verify`, which
//! runs one direction inside a workflow (`federation-verify`, `quickstart`), lives in dive-phases.
//!
//! Tables `federation_links` and `federation_verifications` are this crate's ([`MIGRATOR`]).
//!
//! Errors name the side that failed (home or target, by code and URL) and never contain a
//! password, an authorization code or a token: URLs in errors are shown without their query.

mod admin_login;
mod browser;
mod direction;
mod html;
mod jwt;
pub mod probe;

pub use admin_login::{AdminLoginError, admin_login};
pub use browser::{CALLBACK_URI, CLIENT_ID, LoginResult, brokered_login};
pub use direction::{
    ClaimMismatch, DirectionReport, UserReport, compare_claims, for_run, last_success, latest,
    links, record, verify_direction,
};

use std::fmt;

/// The migrations of tables `federation_links` and `federation_verifications`
/// (`migrations/federation/`).
///
/// This crate owns them although the phase type `federation.record` (dive-phases) writes
/// `federation_links`: it records verifications, reads the links ([`links`]) and has no engine
/// types, so the tables come with whatever uses federation data, engine or not (dive-phases
/// depends on this crate, not the other way round).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/federation");

/// One Keycloak instance as the verifier sees it: its code and its base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Upper case, e.g. `FRA`.
    pub code: String,
    /// Base URL without a trailing `/`, e.g. `https://127.0.0.1:20011`.
    pub url: String,
}

impl Endpoint {
    pub fn new(code: &str, url: &str) -> Endpoint {
        Endpoint {
            code: code.trim().to_ascii_uppercase(),
            url: url.trim().trim_end_matches('/').to_string(),
        }
    }

    pub fn lower(&self) -> String {
        self.code.to_ascii_lowercase()
    }

    /// `dive-<code>`.
    pub fn realm(&self) -> String {
        format!("dive-{}", self.lower())
    }

    /// The realm's issuer, `<url>/realms/dive-<code>`.
    pub fn issuer(&self) -> String {
        format!("{}/realms/{}", self.url, self.realm())
    }

    /// The alias of the identity provider other realms use to broker to this one.
    pub fn idp_alias(&self) -> String {
        format!("{}-idp", self.lower())
    }
}

impl From<&dive_instances::InstanceRecord> for Endpoint {
    fn from(rec: &dive_instances::InstanceRecord) -> Endpoint {
        Endpoint::new(&rec.code, &rec.keycloak_url())
    }
}

/// Which side of a brokered login something happened on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Where the user's account lives and where the password is posted.
    Home,
    /// Where the user logs in through the identity provider, and whose tokens are checked.
    Target,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Home => "home",
            Side::Target => "target",
        })
    }
}

/// Why a brokered login failed. Never holds a password, a code or a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum VerifyError {
    /// No answer: connection refused, timeout, …
    #[error("{side} keycloak {code} ({url}) unreachable: {message}")]
    Unreachable {
        side: Side,
        code: String,
        url: String,
        message: String,
        /// A request timed out (a busy Keycloak) rather than being refused.
        timed_out: bool,
    },
    /// An error status, with Keycloak's own explanation when it gave one.
    #[error("{side} {code} answered {status} at the {step}{}", detail(.message))]
    Status {
        side: Side,
        code: String,
        status: u16,
        step: String,
        message: String,
    },
    /// Anything else that went wrong on one side: a refused login, a page the verifier cannot
    /// get past, a token that does not validate.
    #[error("{side} {code}: {message}")]
    Flow {
        side: Side,
        code: String,
        message: String,
    },
    /// A problem before or outside the login: a missing secret, the database, an admin call.
    #[error("{0}")]
    Setup(String),
    /// dive's state database could not serve (down, restarting, out of connection slots).
    #[error("{0}")]
    StateDbUnavailable(String),
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl VerifyError {
    /// `what: error` for a query on the state database.
    pub fn setup_db(what: &str, e: &sqlx::Error) -> Self {
        let message = format!("{what}: {e}");
        if dive_error::is_db_unavailable(e) {
            VerifyError::StateDbUnavailable(message)
        } else {
            VerifyError::Setup(message)
        }
    }

    /// The side that failed, if the failure was in the login.
    pub fn side(&self) -> Option<Side> {
        match self {
            VerifyError::Unreachable { side, .. }
            | VerifyError::Status { side, .. }
            | VerifyError::Flow { side, .. } => Some(*side),
            VerifyError::Setup(_) | VerifyError::StateDbUnavailable(_) => None,
        }
    }

    /// A request timed out: trying the login again may help.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            VerifyError::Unreachable {
                timed_out: true,
                ..
            }
        )
    }

    /// Whether a fresh login may succeed where this one failed: a request timed out (a busy or
    /// just-started Keycloak), or a side answered 5xx — once, right after a partner's container
    /// was cut off and reconnected, a target could not redeem one code at its partner (most
    /// likely a pooled back-channel connection the partner no longer had: Keycloak does not
    /// resend that POST) while the next login passed. A refused connection (a stopped
    /// Keycloak) or a refused login is not worth another.
    pub fn is_worth_another_login(&self) -> bool {
        self.is_timeout() || matches!(self, VerifyError::Status { status, .. } if *status >= 500)
    }
}

impl dive_error::Classify for VerifyError {
    /// An unreachable side, or one that answered 5xx, 408 or 429, may answer later; a refused
    /// login, a page the verifier cannot get past or a missing secret will not change by itself.
    fn is_retryable(&self) -> bool {
        match self {
            VerifyError::Unreachable { .. } => true,
            VerifyError::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            VerifyError::Flow { .. } | VerifyError::Setup(_) => false,
            VerifyError::StateDbUnavailable(_) => true,
        }
    }

    fn is_state_db_unavailable(&self) -> bool {
        matches!(self, VerifyError::StateDbUnavailable(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_and_server_errors_are_worth_another_login() {
        let status = |status| VerifyError::Status {
            side: Side::Target,
            code: "USA".into(),
            status,
            step: "broker endpoint".into(),
            message: String::new(),
        };
        let unreachable = |timed_out| VerifyError::Unreachable {
            side: Side::Home,
            code: "FRA".into(),
            url: "https://127.0.0.1:1".into(),
            message: String::new(),
            timed_out,
        };
        assert!(status(502).is_worth_another_login());
        assert!(unreachable(true).is_worth_another_login());
        assert!(!status(400).is_worth_another_login());
        assert!(!unreachable(false).is_worth_another_login());
        assert!(!VerifyError::Setup("no secret".into()).is_worth_another_login());
    }

    #[test]
    fn errors_name_the_side() {
        let e = VerifyError::Unreachable {
            side: Side::Home,
            code: "USA".into(),
            url: "http://127.0.0.1:20001".into(),
            message: "connection refused".into(),
            timed_out: false,
        };
        assert_eq!(
            e.to_string(),
            "home keycloak USA (http://127.0.0.1:20001) unreachable: connection refused"
        );
        let e = VerifyError::Status {
            side: Side::Target,
            code: "FRA".into(),
            status: 400,
            step: "token endpoint".into(),
            message: "invalid_grant: Code not valid".into(),
        };
        assert_eq!(
            e.to_string(),
            "target FRA answered 400 at the token endpoint: invalid_grant: Code not valid"
        );
        let ep = Endpoint::new("fra", "http://127.0.0.1:1/");
        assert_eq!(ep.issuer(), "http://127.0.0.1:1/realms/dive-fra");
        assert_eq!(ep.idp_alias(), "fra-idp");
    }
}
