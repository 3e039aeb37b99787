//! `rotation.database`: the instance's PostgreSQL passwords — the superuser's
//! (`<code>/postgres/password`) and Keycloak's role (`<code>/keycloak/db-password`) — become the
//! versions this run minted, by converging the instance with its deploy workflow as a child run
//! (`instance-deploy`): `postgres.database` sets both roles' passwords from the store (PostgreSQL
//! keeps the connections Keycloak already has, so Keycloak goes on serving), and the `service`
//! phase restarts Keycloak with its new database password (the only downtime; a restart is the
//! least that lets Keycloak pick up a new database password). Output `{rotated, run_id,
//! converge_ms}`: the child's duration, an upper bound of the downtime of that instance's logins.
//!
//! ```yaml
//! - id: database
//!   type: rotation.database
//!   after: [provider, users]
//!   code: "${params.code}"
//!   only: "${params.only}"
//! ```
//! Idempotency: converging an instance whose passwords are already the store's changes nothing
//! (the deploy is a no-op). Compensation: the minted versions are removed from the store first,
//! then the instance converges again — to the previous passwords, with one more restart.

use super::{default_only, needed_secrets, origin, password_change, planned_mints, selected};
use crate::context::Services;
use crate::federation::{breaker, code, instance};
use dive_engine::{
    Action, Change, Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Instant;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateDatabase {
    pub code: String,
    #[serde(default = "default_only")]
    pub only: String,
}

impl RotateDatabase {
    /// The database secrets of the instance this run minted.
    async fn minted(&self, ctx: &PhaseContext) -> Result<Vec<String>, PhaseError> {
        if !selected(&self.only, "database")? {
            return Ok(Vec::new());
        }
        let code = code(&self.code)?;
        let store = Services::of(ctx)?.secrets();
        let origin = origin(ctx);
        let mut out = Vec::new();
        for s in needed_secrets(&code, &[]) {
            if s.kind == "database" && store.minted_by(&s.name, &origin).await?.is_some() {
                out.push(s.name);
            }
        }
        Ok(out)
    }

    /// Runs the instance's deploy as a child run; returns its output and how long it took.
    async fn converge(&self, ctx: &PhaseContext) -> Result<(Value, u128), PhaseError> {
        let code = code(&self.code)?;
        let rec = instance(Services::of(ctx)?.instances(), &code)
            .await
            .map_err(PhaseError::fatal)?;
        ctx.note(format!(
            "converging {} with its new database passwords (Keycloak restarts)",
            rec.code
        ));
        let started = Instant::now();
        let out = super::converge(ctx, &rec).await?;
        Ok((out, started.elapsed().as_millis()))
    }
}

#[typetag::serde(name = "rotation.database")]
#[async_trait]
impl Phase for RotateDatabase {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        if self.minted(ctx).await?.is_empty() {
            return Ok(json!({ "rotated": false }));
        }
        let (child, took) = self.converge(ctx).await?;
        tracing::info!(instance = %self.code, converge_ms = took as u64, "database passwords rotated");
        Ok(json!({ "rotated": true, "run_id": child["run_id"], "converge_ms": took as u64 }))
    }

    /// Each PostgreSQL role whose password mint would mint, and Keycloak's restart.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let code = code(&self.code)?;
        let mints = planned_mints(ctx);
        let mut changes = Vec::new();
        for s in needed_secrets(&code, &[]) {
            let Some(versions) = mints.get(&s.name).filter(|_| s.kind == "database") else {
                continue;
            };
            // The superuser's secret is `<code>/postgres/password`, Keycloak's role's
            // `<code>/keycloak/db-password`.
            let role = if s.name.ends_with("/postgres/password") {
                "postgres"
            } else {
                "keycloak"
            };
            changes.push(password_change(
                &code,
                format!("role {role} (PostgreSQL)"),
                *versions,
            ));
        }
        if changes.is_empty() {
            return Ok(PhasePlan::unchanged(json!({ "rotated": false })));
        }
        let rec = instance(Services::of(ctx)?.instances(), &code)
            .await
            .map_err(PhaseError::fatal)?;
        changes.push(
            Change::new(
                Some(&code),
                format!("service keycloak ({})", rec.runtime),
                Action::Start,
            )
            .because("restarted with its new database password"),
        );
        Ok(PhasePlan::changes(changes, json!({ "rotated": true })))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, output: &Value) -> Result<(), PhaseError> {
        if output["rotated"] != json!(true) {
            return Ok(());
        }
        let store = Services::of(ctx)?.secrets();
        let origin = origin(ctx);
        for name in self.minted(ctx).await? {
            store.unmint(&name, &origin).await?;
        }
        // Converge again even when nothing was left to unmint: a compensation retried after
        // the unmint must still bring Keycloak back to the previous password.
        self.converge(ctx).await?;
        Ok(())
    }

    fn breaker_key(&self) -> Option<String> {
        breaker(&self.code)
    }
}
