//! `rotation.admin`: the Keycloak bootstrap admin's password (`<code>/keycloak/admin-password`,
//! user `admin` in realm `master`) becomes the version this run minted. Runs right after
//! `rotation.mint`; until it has, dive's admin logins fall back to the previous version
//! (`dive_verify::admin_login`), and from then on use the new one.
//!
//! ```yaml
//! - id: admin
//!   type: rotation.admin
//!   after: [mint]
//!   code: "${params.code}"
//!   only: "${params.only}"
//! ```
//! Output `{rotated, changed}`. The new password is proven (a token with it) and the previous one
//! refused before the phase succeeds.
//!
//! Idempotency: when Keycloak already accepts the new password nothing is written.
//! Compensation: the previous password is set again (dive's admin login accepts either).

use super::{default_only, minted, origin, password_change, planned_mints, selected, set_password};
use crate::context::Services;
use crate::federation::{admin, breaker, code, instance};
use dive_engine::{Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag};
use dive_keycloak::{ADMIN_USER, KeycloakAdmin, admin_password_secret};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const MASTER: &str = "master";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateAdmin {
    pub code: String,
    #[serde(default = "default_only")]
    pub only: String,
}

#[typetag::serde(name = "rotation.admin")]
#[async_trait]
impl Phase for RotateAdmin {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let code = code(&self.code)?;
        let name = admin_password_secret(&code);
        let store = Services::of(ctx)?.secrets();
        let m = match selected(&self.only, "admin")? {
            true => minted(store, &name, &origin(ctx)).await?,
            false => None,
        };
        let Some(m) = m else {
            return Ok(json!({ "rotated": false, "changed": false }));
        };
        let rec = instance(Services::of(ctx)?.instances(), &code)
            .await
            .map_err(PhaseError::fatal)?;
        // `admin` logs in with the new password, or the previous one while Keycloak has that.
        let changed = set_password(
            &admin(ctx, &rec).await?,
            MASTER,
            ADMIN_USER,
            m.value.expose(),
        )
        .await?;
        let admin = KeycloakAdmin::connect_named(
            Services::of(ctx)?.trust(),
            &format!("keycloak {code}"),
            &rec.keycloak_url(),
            ADMIN_USER,
            m.value.expose(),
        )
        .await?;
        if admin
            .check_password(MASTER, ADMIN_USER, m.previous.expose())
            .await?
        {
            return Err(PhaseError::retryable(format!(
                "{}: the previous admin password is still accepted",
                admin.name()
            )));
        }
        if changed {
            tracing::info!(instance = %code, version = m.version, "admin password rotated");
        }
        Ok(json!({ "rotated": true, "version": m.version, "changed": changed }))
    }

    /// The admin's password, when mint would mint it.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let code = code(&self.code)?;
        let Some(versions) = planned_mints(ctx)
            .get(&admin_password_secret(&code))
            .copied()
        else {
            return Ok(PhasePlan::unchanged(
                json!({ "rotated": false, "changed": false }),
            ));
        };
        Ok(PhasePlan::changes(
            vec![password_change(
                &code,
                format!("user {ADMIN_USER} in realm {MASTER}"),
                versions,
            )],
            json!({ "rotated": true, "version": versions.1, "changed": true }),
        ))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, output: &Value) -> Result<(), PhaseError> {
        if output["rotated"] != json!(true) {
            return Ok(());
        }
        let code = code(&self.code)?;
        let store = Services::of(ctx)?.secrets();
        let Some(m) = minted(store, &admin_password_secret(&code), &origin(ctx)).await? else {
            return Ok(());
        };
        // An instance reset since has nothing to restore.
        let Ok(rec) = instance(Services::of(ctx)?.instances(), &code).await else {
            return Ok(());
        };
        if set_password(
            &admin(ctx, &rec).await?,
            MASTER,
            ADMIN_USER,
            m.previous.expose(),
        )
        .await?
        {
            tracing::info!(instance = %code, "admin password restored (compensation)");
        }
        Ok(())
    }

    fn breaker_key(&self) -> Option<String> {
        breaker(&self.code)
    }
}
