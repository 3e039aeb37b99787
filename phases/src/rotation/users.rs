//! `rotation.users`: each test user of `code` (`testuser-<code>-1..4`, realm `dive-<code>`) gets
//! the password version this run minted (`<code>/users/<username>`).
//!
//! ```yaml
//! - id: users
//!   type: rotation.users
//!   after: [admin]
//!   code: "${params.code}"
//!   only: "${params.only}"
//! ```
//! Output `{users: [{username, version, changed}]}`. Each new password is proven (a login with
//! it) and the previous one refused before the phase succeeds.
//!
//! Idempotency: a user whose new password already works is left alone.
//! Compensation: each user whose previous password does not work gets it back — also after a
//! failed attempt that changed some users only (`compensates_failure`).

use super::{default_only, minted, origin, password_change, planned_mints, selected, set_password};
use crate::context::Services;
use crate::federation::{admin, breaker, code, instance};
use dive_engine::{Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag};
use dive_keycloak::{test_users, user_password_secret};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateUsers {
    pub code: String,
    #[serde(default = "default_only")]
    pub only: String,
}

impl RotateUsers {
    /// Each test user whose password this run minted, with what to set: the new value
    /// (`forward`) or the previous one.
    async fn apply(&self, ctx: &PhaseContext, forward: bool) -> Result<Vec<Value>, PhaseError> {
        let mut out = Vec::new();
        if !selected(&self.only, "users")? {
            return Ok(out);
        }
        let code = code(&self.code)?;
        let services = Services::of(ctx)?;
        let origin = origin(ctx);
        let rec = instance(services.instances(), &code)
            .await
            .map_err(PhaseError::fatal)?;
        let realm = rec.realm();
        let mut admin_api = None;
        for user in test_users(&rec.code_lower()) {
            let name = user_password_secret(&rec.code_lower(), &user.username);
            let Some(m) = minted(services.secrets(), &name, &origin).await? else {
                continue;
            };
            let admin_api = match &admin_api {
                Some(a) => a,
                None => admin_api.insert(admin(ctx, &rec).await?),
            };
            let (value, other) = if forward {
                (m.value.expose(), m.previous.expose())
            } else {
                (m.previous.expose(), m.value.expose())
            };
            let changed = set_password(admin_api, &realm, &user.username, value).await?;
            if forward
                && admin_api
                    .check_password(&realm, &user.username, other)
                    .await?
            {
                return Err(PhaseError::retryable(format!(
                    "{}: the previous password of {} is still accepted",
                    admin_api.name(),
                    user.username
                )));
            }
            out.push(
                json!({ "username": user.username, "version": m.version, "changed": changed }),
            );
        }
        Ok(out)
    }
}

#[typetag::serde(name = "rotation.users")]
#[async_trait]
impl Phase for RotateUsers {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let users = self.apply(ctx, true).await?;
        Ok(json!({ "users": users }))
    }

    /// Each test user whose password mint would mint.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let code = code(&self.code)?;
        let lower = code.to_ascii_lowercase();
        let mints = planned_mints(ctx);
        let mut changes = Vec::new();
        let mut users = Vec::new();
        for user in test_users(&lower) {
            let Some(versions) = mints.get(&user_password_secret(&lower, &user.username)) else {
                continue;
            };
            changes.push(password_change(
                &code,
                format!("user {} in realm dive-{lower}", user.username),
                *versions,
            ));
            users
                .push(json!({ "username": user.username, "version": versions.1, "changed": true }));
        }
        Ok(PhasePlan::changes(changes, json!({ "users": users })))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    fn compensates_failure(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, _output: &Value) -> Result<(), PhaseError> {
        let restored = self.apply(ctx, false).await?;
        tracing::info!(
            users = restored.len(),
            "test users' previous passwords restored (compensation)"
        );
        Ok(())
    }

    fn breaker_key(&self) -> Option<String> {
        breaker(&self.code)
    }
}
