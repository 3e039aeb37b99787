//! `federation.forget`: removes every federation an instance takes part in, on its partners'
//! side. For each recorded pair: in the partner's realm the identity provider `<code>-idp` and
//! the client `federation-<code>`, then the record; last, every `federation/…` secret that names
//! the instance. `instance-reset` runs it first, so resetting a linked instance never leaves its
//! partner with an identity provider and a client for an instance that is gone, nor their
//! secrets. The instance's own realm is left alone: it goes with the instance (and its Keycloak
//! need not answer). A partner whose Keycloak does not answer fails the phase (retryable): the
//! reset stays resumable and finishes once the partner is up again.
//!
//! ```yaml
//! - id: unlink
//!   type: federation.forget
//!   code: FRA
//! ```
//! Output `{code, unlinked: [partners], secrets_removed: [names]}`.
//!
//! Idempotency: a pair's record goes only after both of its directions are removed, so a run
//! resumed after a crash finds what is left and removes it; with nothing left it does nothing.
//! Compensation: none — linking again recreates everything (`dive federation link`).

use super::{admin, code, delete_client, delete_idp};
use crate::context::Services;
use dive_engine::{Phase, PhaseContext, PhaseError, async_trait, typetag};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationForget {
    pub code: String,
}

/// Whether secret `name` belongs to a federation of `lower` (`federation/<a>/<b>/…`).
fn names_instance(name: &str, lower: &str) -> bool {
    name.starts_with("federation/") && dive_secrets::owners(name).contains(&lower)
}

#[typetag::serde(name = "federation.forget")]
#[async_trait]
impl Phase for FederationForget {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let code = code(&self.code)?;
        let pool = ctx.store.pool();
        let pairs: Vec<(String, String)> = sqlx::query_as(
            "SELECT hub, spoke FROM federation_links WHERE hub = $1 OR spoke = $1 ORDER BY 1, 2",
        )
        .bind(&code)
        .fetch_all(pool)
        .await
        .map_err(|e| crate::db::state_db_error(&e, "federation_links"))?;
        let services = Services::of(ctx)?;
        let mut unlinked = Vec::new();
        for (hub, spoke) in pairs {
            let partner = if hub == code { &spoke } else { &hub };
            if let Some(p) = services.instances().get(partner).await? {
                let admin = admin(ctx, &p).await?;
                delete_idp(&admin, &p, &code).await?;
                delete_client(&admin, &p, &code).await?;
            }
            sqlx::query("DELETE FROM federation_links WHERE hub = $1 AND spoke = $2")
                .bind(&hub)
                .bind(&spoke)
                .execute(pool)
                .await
                .map_err(|e| crate::db::state_db_error(&e, "federation_links"))?;
            unlinked.push(partner.clone());
        }
        let store = services.secrets();
        let lower = code.to_ascii_lowercase();
        let mut secrets_removed = Vec::new();
        for info in store.list().await? {
            if names_instance(&info.name, &lower) {
                secrets_removed.extend(store.delete_prefix(&info.name).await?);
            }
        }
        if !unlinked.is_empty() || !secrets_removed.is_empty() {
            tracing::info!(code = %code, ?unlinked, ?secrets_removed, "removed the instance's federations");
        }
        Ok(json!({ "code": code, "unlinked": unlinked, "secrets_removed": secrets_removed }))
    }
}

#[cfg(test)]
mod tests {
    use super::names_instance;

    #[test]
    fn federation_secrets_are_matched_by_either_side() {
        assert!(names_instance("federation/usa/fra/client-secret", "fra"));
        assert!(names_instance("federation/fra/usa/client-secret", "fra"));
        assert!(!names_instance("federation/usa/gbr/client-secret", "fra"));
        assert!(!names_instance("fra/keycloak/admin-password", "fra"));
        assert!(!names_instance("federation/usa/fraud/x", "fra"));
    }
}
