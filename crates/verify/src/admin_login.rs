//! Logging in to an instance's Keycloak as its bootstrap admin, with the password the store
//! holds. A rotation of the admin password commits the new version to the store before Keycloak
//! has it, so for a moment (or after a crash, until `dive resume`) the latest version is not yet
//! the one Keycloak accepts: a login that Keycloak refuses is tried once more with the version
//! before it.

use dive_error::Classify;
use dive_keycloak::{ADMIN_USER, KeycloakAdmin, KeycloakError, admin_password_secret};
use dive_secrets::{SecretError, SecretStore};
use dive_tls::Trust;

/// Why the admin login failed. Never holds a password.
#[derive(Debug, thiserror::Error)]
pub enum AdminLoginError {
    #[error("secret `{0}` does not exist (deploy the instance first)")]
    Missing(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Keycloak(#[from] KeycloakError),
}

impl Classify for AdminLoginError {
    fn is_retryable(&self) -> bool {
        match self {
            AdminLoginError::Missing(_) => false,
            AdminLoginError::Secret(e) => e.is_retryable(),
            AdminLoginError::Keycloak(e) => e.is_retryable(),
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            AdminLoginError::Keycloak(e) => e.retry_after(),
            _ => None,
        }
    }

    fn is_state_db_unavailable(&self) -> bool {
        matches!(self, AdminLoginError::Secret(e) if e.is_state_db_unavailable())
    }
}

/// The admin API of instance `code` at `url`, logged in as `admin` (errors start with `name`).
pub async fn admin_login(
    store: &SecretStore,
    trust: &Trust,
    name: &str,
    code: &str,
    url: &str,
) -> Result<KeycloakAdmin, AdminLoginError> {
    let secret = admin_password_secret(code);
    let (password, version) = store
        .get(&secret)
        .await?
        .ok_or_else(|| AdminLoginError::Missing(secret.clone()))?;
    match KeycloakAdmin::connect_named(trust, name, url, ADMIN_USER, password.expose()).await {
        Err(e) if e.is_refused_credentials() && version > 1 => {
            let Some(previous) = store.get_version(&secret, version - 1).await? else {
                return Err(e.into());
            };
            let admin =
                KeycloakAdmin::connect_named(trust, name, url, ADMIN_USER, previous.expose())
                    .await?;
            tracing::info!(secret = %secret, version = version - 1,
                "logged in with the previous admin password (a rotation is under way)");
            Ok(admin)
        }
        other => Ok(other?),
    }
}
