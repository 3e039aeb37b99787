//! `rotation.federation_provider`: for each direction X→P of the links of `code` whose secret
//! this run minted, provider `<x>-idp` in P's realm gets the new secret (and the marker
//! `dive.secret.version`). X's client accepts both the new and the previous secret by now
//! (`rotation.federation_client` ran first), so no brokered login fails while this happens.
//!
//! ```yaml
//! - id: provider
//!   type: rotation.federation_provider
//!   after: [client]
//!   code: "${params.code}"
//!   only: "${params.only}"
//! ```
//! Output `{providers: [{from, to, alias, version, changed}]}`.
//!
//! Idempotency: Keycloak masks a provider's secret, so the marker tells: a provider whose
//! marker already is the new version is left alone; otherwise the secret and marker are written
//! in one `PUT`.
//!
//! Compensation: per direction, the previous secret and marker go back (X's client still
//! accepts both until its own compensation runs next). It reads the live providers, so it also
//! undoes a failed attempt that changed some of them (`compensates_failure`).

use super::{default_only, planned_directions, rotated_directions};
use crate::federation::{SECRET_VERSION_KEY, admin, breaker, idp_alias, idp_path};
use dive_engine::{
    Action, Change, Phase, PhaseContext, PhaseError, PhasePlan, SENSITIVE, async_trait, typetag,
};
use dive_instances::InstanceRecord;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateFederationProvider {
    pub code: String,
    #[serde(default = "default_only")]
    pub only: String,
}

/// Writes `value` (version `version`) into provider `<x>-idp` in P's realm unless its marker
/// already says `version`; returns whether it wrote.
async fn set_provider_secret(
    ctx: &PhaseContext,
    x: &InstanceRecord,
    p: &InstanceRecord,
    value: &str,
    version: u32,
) -> Result<bool, PhaseError> {
    let admin = admin(ctx, p).await?;
    let path = idp_path(&p.realm(), &idp_alias(&x.code));
    let mut rep: Value = admin.get_opt(&path).await?.ok_or_else(|| {
        PhaseError::fatal(format!(
            "{}: identity provider {} does not exist in realm {}: link again with `dive federation link`",
            admin.name(),
            idp_alias(&x.code),
            p.realm()
        ))
    })?;
    let want = version.to_string();
    if rep["config"][SECRET_VERSION_KEY].as_str() == Some(want.as_str()) {
        return Ok(false);
    }
    rep["config"]["clientSecret"] = json!(value);
    rep["config"][SECRET_VERSION_KEY] = json!(want);
    admin.put(&path, Some(&rep)).await?;
    Ok(true)
}

#[typetag::serde(name = "rotation.federation_provider")]
#[async_trait]
impl Phase for RotateFederationProvider {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let mut out = Vec::new();
        for (d, m) in rotated_directions(ctx, &self.code, &self.only).await? {
            let changed = set_provider_secret(ctx, &d.x, &d.p, m.value.expose(), m.version).await?;
            if changed {
                tracing::info!(from = %d.x.code, to = %d.p.code, version = m.version,
                    "partner's identity provider has the new secret");
            }
            out.push(json!({
                "from": d.x.code, "to": d.p.code, "alias": idp_alias(&d.x.code),
                "version": m.version, "changed": changed,
            }));
        }
        Ok(json!({ "providers": out }))
    }

    /// Each partner's provider whose secret mint would mint.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let mut changes = Vec::new();
        let mut out = Vec::new();
        for (d, (previous, version)) in planned_directions(ctx, &self.code).await? {
            let alias = idp_alias(&d.x.code);
            changes.push(
                Change::new(
                    Some(&d.p.code),
                    format!("identity provider {alias} in realm {}", d.p.realm()),
                    Action::Update,
                )
                .field("clientSecret", SENSITIVE, SENSITIVE)
                .field(SECRET_VERSION_KEY, previous, version),
            );
            out.push(json!({
                "from": d.x.code, "to": d.p.code, "alias": alias,
                "version": version, "changed": true,
            }));
        }
        Ok(PhasePlan::changes(changes, json!({ "providers": out })))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    fn compensates_failure(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, _output: &Value) -> Result<(), PhaseError> {
        for (d, m) in rotated_directions(ctx, &self.code, &self.only).await? {
            if set_provider_secret(ctx, &d.x, &d.p, m.previous.expose(), m.version - 1).await? {
                tracing::info!(from = %d.x.code, to = %d.p.code,
                    "partner's identity provider has the previous secret back (compensation)");
            }
        }
        Ok(())
    }

    fn breaker_key(&self) -> Option<String> {
        breaker(&self.code)
    }
}
