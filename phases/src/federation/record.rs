//! `federation.record`: records the linked pair (hub, spoke) in table `federation_links`, or
//! removes it (`remove: true`).
//!
//! ```yaml
//! - id: record
//!   type: federation.record
//!   after: [idp-usa-fra, idp-fra-usa]
//!   hub: "${params.hub}"
//!   spoke: "${params.code}"
//!   remove: false            # optional; true for unlinking
//! ```
//! Output `{hub, spoke, created, changed}` (linking) or `{hub, spoke, removed, changed}`
//! (removing). `run_id` keeps the run that first linked the pair; `updated_at` is the last link.
//!
//! Idempotency: an upsert; `created` is true when the row belongs to this run (also after a
//! crash between the insert and the checkpoint); linking again reports `changed: false`.
//! Removing a missing row is success.
//!
//! Compensation (linking only): deletes the row if this run created it. Removal has none.

use super::{code, code_field, flag};
use crate::context::Services;
use dive_engine::{
    Action, Change, Phase, PhaseContext, PhaseError, PhasePlan, async_trait, typetag,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationRecord {
    #[serde(deserialize_with = "code_field")]
    pub hub: String,
    #[serde(deserialize_with = "code_field")]
    pub spoke: String,
    #[serde(default)]
    pub remove: bool,
}

fn db_error(e: sqlx::Error) -> PhaseError {
    crate::db::state_db_error(&e, "federation_links")
}

#[typetag::serde(name = "federation.record")]
#[async_trait]
impl Phase for FederationRecord {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let hub = code(&self.hub)?;
        let spoke = code(&self.spoke)?;
        let reg = Services::of(ctx)?.instances();
        let pool = reg.pool();
        if self.remove {
            let n = sqlx::query("DELETE FROM federation_links WHERE hub = $1 AND spoke = $2")
                .bind(&hub)
                .bind(&spoke)
                .execute(pool)
                .await
                .map_err(db_error)?
                .rows_affected();
            return Ok(json!({"hub": hub, "spoke": spoke, "removed": n > 0, "changed": n > 0}));
        }
        let owner: Option<sqlx::types::Uuid> = sqlx::query_scalar(
            "INSERT INTO federation_links (hub, spoke, run_id) VALUES ($1, $2, $3) \
             ON CONFLICT (hub, spoke) DO UPDATE SET updated_at = now() RETURNING run_id",
        )
        .bind(&hub)
        .bind(&spoke)
        .bind(ctx.run_id)
        .fetch_one(pool)
        .await
        .map_err(db_error)?;
        let created = owner == Some(ctx.run_id);
        if created {
            tracing::info!(hub = %hub, spoke = %spoke, "recorded federation link");
        }
        Ok(json!({"hub": hub, "spoke": spoke, "created": created, "changed": created}))
    }

    /// The recorded pair that would be added or removed.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let hub = code(&self.hub)?;
        let spoke = code(&self.spoke)?;
        let recorded: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM federation_links WHERE hub = $1 AND spoke = $2)",
        )
        .bind(&hub)
        .bind(&spoke)
        .fetch_one(ctx.store.pool())
        .await
        .map_err(db_error)?;
        let object = format!("federation link {hub} ↔ {spoke}");
        let change = |action| vec![Change::new(Some(&spoke), object.clone(), action)];
        Ok(match (self.remove, recorded) {
            (true, true) => PhasePlan::changes(
                change(Action::Delete),
                json!({"hub": hub, "spoke": spoke, "removed": true, "changed": true}),
            ),
            (true, false) => PhasePlan::unchanged(
                json!({"hub": hub, "spoke": spoke, "removed": false, "changed": false}),
            ),
            (false, true) => PhasePlan::unchanged(
                json!({"hub": hub, "spoke": spoke, "created": false, "changed": false}),
            ),
            (false, false) => PhasePlan::changes(
                change(Action::Create),
                json!({"hub": hub, "spoke": spoke, "created": true, "changed": true}),
            ),
        })
    }

    fn has_compensation(&self) -> bool {
        !self.remove
    }

    async fn compensate(&self, ctx: &PhaseContext, output: &Value) -> Result<(), PhaseError> {
        if self.remove || !flag(output, "created") {
            return Ok(());
        }
        let reg = Services::of(ctx)?.instances();
        sqlx::query("DELETE FROM federation_links WHERE hub = $1 AND spoke = $2 AND run_id = $3")
            .bind(code(&self.hub)?)
            .bind(code(&self.spoke)?)
            .bind(ctx.run_id)
            .execute(reg.pool())
            .await
            .map_err(db_error)?;
        Ok(())
    }
}
