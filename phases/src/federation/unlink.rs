//! `federation.unlink`: removes one direction X→P of a federation: the identity provider
//! `<from>-idp` (with its mappers) from realm `dive-<to>`, the client `federation-<to>` from realm
//! `dive-<from>`, and the secret `federation/<from>/<to>/client-secret`.
//!
//! ```yaml
//! - id: unlink-usa-fra
//!   type: federation.unlink
//!   from: USA
//!   to: FRA
//! ```
//! Output `{from, to, idp_removed, client_removed, secret_removed, changed}`. An instance that is
//! no longer registered (reset) has nothing left to remove and is skipped.
//!
//! Idempotency: what is already gone is success; a second run reports `changed: false`.
//! Compensation: none — a removed secret cannot be brought back, and linking again recreates
//! everything (`dive federation link`).

use super::{admin, breaker, client_secret_name, code, code_field};
use crate::context::Services;
use dive_engine::{
    Action, Change, Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationUnlink {
    #[serde(deserialize_with = "code_field")]
    pub from: String,
    #[serde(deserialize_with = "code_field")]
    pub to: String,
}

#[typetag::serde(name = "federation.unlink")]
#[async_trait]
impl Phase for FederationUnlink {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let from = code(&self.from)?;
        let to = code(&self.to)?;
        let reg = Services::of(ctx)?.instances();
        let mut idp_removed = false;
        let mut client_removed = false;
        if let Some(p) = reg.get(&to).await? {
            let admin = admin(ctx, &p).await?;
            idp_removed = super::delete_idp(&admin, &p, &from).await?;
        }
        if let Some(x) = reg.get(&from).await? {
            let admin = admin(ctx, &x).await?;
            client_removed = super::delete_client(&admin, &x, &to).await?;
        }
        let secret_removed = !Services::of(ctx)?
            .secrets()
            .delete_prefix(&client_secret_name(&from, &to))
            .await?
            .is_empty();
        let changed = idp_removed || client_removed || secret_removed;
        if changed {
            tracing::info!(from = %from, to = %to, idp_removed, client_removed, secret_removed,
                "removed federation direction");
        }
        Ok(json!({
            "from": from,
            "to": to,
            "idp_removed": idp_removed,
            "client_removed": client_removed,
            "secret_removed": secret_removed,
            "changed": changed,
        }))
    }

    /// What of the direction is still there and would be removed. Only reads.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let from = code(&self.from)?;
        let to = code(&self.to)?;
        let services = Services::of(ctx)?;
        let reg = services.instances();
        let mut changes = Vec::new();
        let mut idp_removed = false;
        let mut client_removed = false;
        if let Some(p) = reg.get(&to).await? {
            let admin = admin(ctx, &p).await?;
            let realm = p.realm();
            let alias = super::idp_alias(&from);
            if admin.realm(&realm).await?.is_some()
                && admin
                    .get_opt::<Value>(&super::idp::idp_path(&realm, &alias))
                    .await?
                    .is_some()
            {
                idp_removed = true;
                changes.push(Change::new(
                    Some(&to),
                    format!("identity provider {alias} in realm {realm}"),
                    Action::Delete,
                ));
            }
        }
        if let Some(x) = reg.get(&from).await? {
            let admin = admin(ctx, &x).await?;
            let realm = x.realm();
            let client = super::client_id(&to);
            if admin.realm(&realm).await?.is_some()
                && admin.client_by_client_id(&realm, &client).await?.is_some()
            {
                client_removed = true;
                changes.push(Change::new(
                    Some(&from),
                    format!("client {client} in realm {realm}"),
                    Action::Delete,
                ));
            }
        }
        let secret = client_secret_name(&from, &to);
        let secret_removed = services.secrets().info(&secret).await?.is_some();
        if secret_removed {
            changes.push(crate::secret_ensure::secret_change(&secret, Action::Delete));
        }
        let changed = !changes.is_empty();
        Ok(PhasePlan::changes(
            changes,
            json!({ "from": from, "to": to, "idp_removed": idp_removed,
                    "client_removed": client_removed, "secret_removed": secret_removed,
                    "changed": changed }),
        ))
    }

    fn breaker_key(&self) -> Option<String> {
        breaker(&self.to)
    }
}
