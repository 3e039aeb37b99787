//! `rotation.federation_client`: for each direction X→P of the links of `code` whose secret this
//! run minted, client `federation-<p>` in X's realm gets the new secret as its primary while the
//! previous one stays accepted as its rotated secret (Keycloak's secret-rotation policy, see
//! `dive_keycloak::ROTATION_ATTRIBUTE`), so P's provider, which still sends the previous one,
//! keeps working.
//!
//! ```yaml
//! - id: client
//!   type: rotation.federation_client
//!   after: [mint]
//!   code: "${params.code}"
//!   only: "${params.only}"
//! ```
//! Output `{clients: [{from, to, client_id, version, changed}]}`.
//!
//! Idempotency: a client whose primary already is the new value is left alone. Otherwise the
//! current primary is moved to the rotated slot (`POST …/client-secret`) — unless the rotated
//! slot already holds the previous version, which means an earlier attempt got that far — and
//! the new value is set (`PUT`, with the marker `dive.secret.version`).
//!
//! Compensation: per direction, the primary goes back to the previous value and marker (P's
//! provider has it back already: rollback runs in reverse), then the rotated secret is dropped.
//! It reads the live clients, so it also undoes a failed attempt that changed one direction and
//! not the other (`compensates_failure`).

use super::{default_only, planned_directions, rotated_directions};
use crate::federation::{SECRET_VERSION_KEY, admin, breaker, client_id};
use dive_engine::{
    Action, Change, Phase, PhaseContext, PhaseError, PhasePlan, SENSITIVE, async_trait, typetag,
};
use dive_keycloak::{KeycloakAdmin, ROTATION_ATTRIBUTE};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateFederationClient {
    pub code: String,
    #[serde(default = "default_only")]
    pub only: String,
}

/// The internal id of client `federation-<to>` in `realm`.
pub(crate) async fn client_uuid(
    admin: &KeycloakAdmin,
    realm: &str,
    to: &str,
) -> Result<String, PhaseError> {
    let cid = client_id(to);
    admin
        .client_by_client_id(realm, &cid)
        .await?
        .and_then(|c| c.id)
        .ok_or_else(|| {
            PhaseError::fatal(format!(
                "{}: client {cid} does not exist in realm {realm}: link again with `dive federation link`",
                admin.name()
            ))
        })
}

/// Sets the primary secret and the version marker (and keeps the client under the policy).
async fn set_primary(
    admin: &KeycloakAdmin,
    realm: &str,
    id: &str,
    to: &str,
    value: &str,
    version: u32,
) -> Result<(), PhaseError> {
    admin
        .set_client_secret(
            realm,
            id,
            &client_id(to),
            value,
            &[
                (SECRET_VERSION_KEY, version.to_string()),
                (ROTATION_ATTRIBUTE, "true".to_string()),
            ],
        )
        .await?;
    Ok(())
}

#[typetag::serde(name = "rotation.federation_client")]
#[async_trait]
impl Phase for RotateFederationClient {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let mut out = Vec::new();
        for (d, m) in rotated_directions(ctx, &self.code, &self.only).await? {
            let admin = admin(ctx, &d.x).await?;
            let realm = d.x.realm();
            admin.ensure_rotation_policy(&realm).await?;
            let id = client_uuid(&admin, &realm, &d.p.code).await?;
            let primary = admin.client_secret(&realm, &id).await?;
            let changed = primary.as_deref().map(String::as_str) != Some(m.value.expose());
            if changed {
                let rotated = admin.rotated_client_secret(&realm, &id).await?;
                if rotated.as_deref().map(String::as_str) != Some(m.previous.expose()) {
                    // The tag first: without the policy covering the client, Keycloak would
                    // not keep the current secret as the rotated one.
                    set_primary(
                        &admin,
                        &realm,
                        &id,
                        &d.p.code,
                        primary
                            .as_deref()
                            .map(String::as_str)
                            .unwrap_or(m.previous.expose()),
                        m.version - 1,
                    )
                    .await?;
                    admin.regenerate_client_secret(&realm, &id).await?;
                }
                set_primary(&admin, &realm, &id, &d.p.code, m.value.expose(), m.version).await?;
                tracing::info!(from = %d.x.code, to = %d.p.code, version = m.version,
                    "federation client has the new secret; the previous one stays accepted");
            }
            out.push(json!({
                "from": d.x.code, "to": d.p.code, "client_id": client_id(&d.p.code),
                "version": m.version, "changed": changed,
            }));
        }
        Ok(json!({ "clients": out }))
    }

    /// Each client whose secret mint would mint.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let mut changes = Vec::new();
        let mut out = Vec::new();
        for (d, (previous, version)) in planned_directions(ctx, &self.code).await? {
            changes.push(
                Change::new(
                    Some(&d.x.code),
                    format!("client {} in realm {}", client_id(&d.p.code), d.x.realm()),
                    Action::Update,
                )
                .field("secret", SENSITIVE, SENSITIVE)
                .field(SECRET_VERSION_KEY, previous, version)
                .because("the previous secret stays accepted until the rotation finishes"),
            );
            out.push(json!({
                "from": d.x.code, "to": d.p.code, "client_id": client_id(&d.p.code),
                "version": version, "changed": true,
            }));
        }
        Ok(PhasePlan::changes(changes, json!({ "clients": out })))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    fn compensates_failure(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, _output: &Value) -> Result<(), PhaseError> {
        for (d, m) in rotated_directions(ctx, &self.code, &self.only).await? {
            let admin = admin(ctx, &d.x).await?;
            let realm = d.x.realm();
            let id = client_uuid(&admin, &realm, &d.p.code).await?;
            let primary = admin.client_secret(&realm, &id).await?;
            if primary.as_deref().map(String::as_str) != Some(m.previous.expose()) {
                set_primary(
                    &admin,
                    &realm,
                    &id,
                    &d.p.code,
                    m.previous.expose(),
                    m.version - 1,
                )
                .await?;
            }
            admin.drop_rotated_client_secret(&realm, &id).await?;
            tracing::info!(from = %d.x.code, to = %d.p.code,
                "federation client has its previous secret back (compensation)");
        }
        Ok(())
    }

    fn breaker_key(&self) -> Option<String> {
        breaker(&self.code)
    }
}
