//! `rotation.finish`: the rotation is proven (`rotation.verify`), so each X drops the previous
//! secret of its federation client (from now on a token request with it is refused), and the
//! store keeps only the latest `keep` versions of each secret this run rotated (older ones are
//! pruned).
//!
//! ```yaml
//! - id: finish
//!   type: rotation.finish
//!   after: [verify]
//!   code: "${params.code}"
//!   only: "${params.only}"
//!   keep: 3       # versions kept per secret (at least 2: the current one and one to roll back to)
//! ```
//! Output `{dropped: [{from, to}], pruned}`.
//!
//! Idempotency: dropping a rotated secret that is gone and pruning to `keep` again change
//! nothing. Compensation: none; it is the last phase, and what it drops is no longer used.

use super::{
    DEFAULT_KEEP, default_only, needed_secrets, origin, planned_directions, planned_mints,
    rotated_directions,
};
use crate::context::Services;
use crate::federation::{admin, breaker, client_id};
use crate::secret_ensure::secret_change;
use dive_engine::{
    Action, Change, Phase, PhaseContext, PhaseError, PhasePlan, SENSITIVE, async_trait, typetag,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

fn default_keep() -> String {
    DEFAULT_KEEP.to_string()
}

/// `keep` as a number of versions (at least 2: the current one and one to roll back to).
fn parse_keep(keep: &str) -> Result<u32, String> {
    match keep.trim().parse::<u32>() {
        Ok(n) if n >= 2 => Ok(n),
        _ => Err(format!(
            "keep: `{keep}` is not a number of versions of at least 2 (the current one and one to \
             roll back to)"
        )),
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationFinish {
    pub code: String,
    #[serde(default = "default_only")]
    pub only: String,
    /// Versions kept per secret (a number, at least 2; a string so it can be a parameter).
    #[serde(default = "default_keep")]
    pub keep: String,
}

#[typetag::serde(name = "rotation.finish")]
#[async_trait]
impl Phase for RotationFinish {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let keep = parse_keep(&self.keep).map_err(PhaseError::fatal)?;
        let services = Services::of(ctx)?;
        let store = services.secrets();
        let origin = origin(ctx);
        let mut dropped = Vec::new();
        for (d, _) in rotated_directions(ctx, &self.code, &self.only).await? {
            let admin = admin(ctx, &d.x).await?;
            let realm = d.x.realm();
            let id = super::federation_client::client_uuid(&admin, &realm, &d.p.code).await?;
            admin.drop_rotated_client_secret(&realm, &id).await?;
            dropped.push(json!({ "from": d.x.code, "to": d.p.code }));
        }
        let code = crate::federation::code(&self.code)?;
        let partners = super::partners(services.pool(), &code)
            .await
            .map_err(PhaseError::retryable)?;
        let mut pruned = 0;
        let names = needed_secrets(&code, &partners)
            .into_iter()
            .map(|s| s.name)
            .chain([super::signing_publish::record_name(&code)]);
        for name in names {
            if store.minted_by(&name, &origin).await?.is_some() {
                pruned += store.prune(&name, keep).await?;
            }
        }
        Ok(json!({ "dropped": dropped, "pruned": pruned }))
    }

    /// Each client's previous secret dropped, and the versions beyond `keep` of each secret
    /// mint would mint.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let keep = parse_keep(&self.keep).map_err(PhaseError::fatal)?;
        let mut changes = Vec::new();
        let mut dropped = Vec::new();
        for (d, _) in planned_directions(ctx, &self.code).await? {
            changes.push(
                Change::new(
                    Some(&d.x.code),
                    format!("client {} in realm {}", client_id(&d.p.code), d.x.realm()),
                    Action::Update,
                )
                .field("rotated secret", SENSITIVE, Value::Null)
                .because("the previous secret is no longer accepted"),
            );
            dropped.push(json!({ "from": d.x.code, "to": d.p.code }));
        }
        let store = Services::of(ctx)?.secrets();
        let mut pruned = 0;
        for name in planned_mints(ctx).keys() {
            let Some(info) = store.info(name).await? else {
                continue;
            };
            // Versions are kept oldest-first contiguous: after the new one, the oldest go.
            let after_mint = info.versions + 1;
            if after_mint > keep {
                pruned += after_mint - keep;
                changes.push(
                    secret_change(name, Action::Update)
                        .field("versions stored", after_mint, keep)
                        .because(format!("only the latest {keep} versions are kept")),
                );
            }
        }
        Ok(PhasePlan::changes(
            changes,
            json!({ "dropped": dropped, "pruned": pruned }),
        ))
    }

    async fn precheck(&self, _ctx: &PhaseContext) -> Result<(), String> {
        if self.keep.contains("${") {
            return Ok(());
        }
        parse_keep(&self.keep).map(|_| ())
    }

    fn breaker_key(&self) -> Option<String> {
        breaker(&self.code)
    }
}
