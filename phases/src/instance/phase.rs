//! `instance.register`: registers an instance (code, role, the run's runtime) and allocates its
//! port block.
//!
//! ```yaml
//! - id: register
//!   type: instance.register
//!   code: ${params.code}     # ISO 3166-1 alpha-3, any case
//!   role: spoke              # hub | spoke
//! ```
//! Output `{code, code_lower, role, runtime, realm, ports: {postgres, keycloak, management},
//! keycloak_url, created}`; later phases use `${phases.register.output.ports.postgres}` and so on.
//!
//! Precheck (before a run writes anything): the code is a country code; a spoke needs a
//! registered hub ("no hub is deployed: run `dive hub deploy` first"); a hub needs no other hub;
//! a registered code must keep its role and runtime.
//!
//! Idempotency: registering again with the same role and runtime returns the same record (and
//! port block). Compensation: only for a registration that this run created — also when the
//! phase ran again after a crash and found its own registration — never one an earlier deploy
//! made. Such an instance did not exist before the run, so nothing of it may stay: it runs last
//! in the rollback and removes what the other compensations leave (the runtime's leftover
//! resources of the instance, the secrets the deploy generated: `secret.ensure` keeps them on
//! purpose), then the registration itself, so a crash half-way leaves it to be compensated again.

use crate::context::Services;
use dive_engine::{
    Action, Change, KNOWN_AFTER_APPLY, Phase, PhaseContext, PhaseError, PhasePlan, async_trait,
    typetag,
};
use dive_instances::{InstanceError, Instances, NO_HUB, Role, normalize_code};
use dive_keycloak::default_realm;
use dive_runtime::RuntimeKind;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRegister {
    pub code: String,
    pub role: Role,
}

fn runtime_kind(ctx: &PhaseContext) -> Option<RuntimeKind> {
    Services::of(ctx).ok().map(|s| s.runtime().kind())
}

impl InstanceRegister {
    fn code(&self) -> Result<String, PhaseError> {
        normalize_code(&self.code).map_err(PhaseError::fatal)
    }

    /// The registry, the code and the run's runtime, once nothing refuses the registration.
    async fn allowed<'c>(
        &self,
        ctx: &'c PhaseContext,
    ) -> Result<(&'c Instances, String, RuntimeKind), PhaseError> {
        let reg = Services::of(ctx)?.instances();
        let code = self.code()?;
        let kind = runtime_kind(ctx)
            .ok_or_else(|| PhaseError::fatal("no runtime configured for this run"))?;
        if let Some(why) = self.refusal(reg, &code, Some(kind)).await? {
            return Err(PhaseError::fatal(why));
        }
        Ok((reg, code, kind))
    }

    /// What makes this registration impossible now, if anything (None when it can go ahead).
    async fn refusal(
        &self,
        reg: &Instances,
        code: &str,
        kind: Option<RuntimeKind>,
    ) -> Result<Option<String>, InstanceError> {
        if let Some(rec) = reg.get(code).await? {
            if rec.role != self.role {
                return Ok(Some(
                    InstanceError::RoleConflict {
                        code: rec.code,
                        registered: rec.role,
                        requested: self.role,
                    }
                    .to_string(),
                ));
            }
            if let Some(kind) = kind
                && rec.runtime != kind
            {
                return Ok(Some(format!(
                    "{} (reset it first, or run with --runtime {})",
                    InstanceError::RuntimeConflict {
                        code: rec.code.clone(),
                        registered: rec.runtime,
                        requested: kind,
                    },
                    rec.runtime
                )));
            }
            return Ok(None);
        }
        let hub = reg.hub().await?;
        Ok(match (self.role, hub) {
            (Role::Spoke, None) => Some(NO_HUB.to_string()),
            (Role::Hub, Some(hub)) if hub.code != code => Some(
                InstanceError::HubExists {
                    existing: hub.code,
                    requested: code.to_string(),
                }
                .to_string(),
            ),
            _ => None,
        })
    }
}

/// The output of a registration: what later phases build on.
fn output(rec: &dive_instances::InstanceRecord, created: bool) -> Value {
    json!({
        "code": rec.code,
        "code_lower": rec.code_lower(),
        "role": rec.role,
        "runtime": rec.runtime,
        "realm": rec.realm(),
        "ports": rec.ports(),
        "keycloak_url": rec.keycloak_url(),
        "created": created,
    })
}

#[typetag::serde(name = "instance.register")]
#[async_trait]
impl Phase for InstanceRegister {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let (reg, code, kind) = self.allowed(ctx).await?;
        let (rec, created) = reg
            .register_for_run(&code, self.role, kind, ctx.run_id)
            .await?;
        Ok(output(&rec, created))
    }

    /// A registered instance stays as it is; a new one would be registered, its port block
    /// (and so its URL) decided by the run.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let (reg, code, kind) = self.allowed(ctx).await?;
        if let Some(rec) = reg.get(&code).await? {
            return Ok(PhasePlan::unchanged(output(&rec, false)));
        }
        let lower = code.to_ascii_lowercase();
        let registration = Change::new(Some(&code), "registration", Action::Create).diff(
            &Value::Null,
            &json!({ "role": self.role, "runtime": kind, "ports": KNOWN_AFTER_APPLY }),
        );
        Ok(PhasePlan::changes(
            vec![registration],
            json!({
                "code": code, "code_lower": lower, "role": self.role, "runtime": kind,
                "realm": default_realm(&code), "ports": KNOWN_AFTER_APPLY,
                "keycloak_url": KNOWN_AFTER_APPLY, "created": true,
            }),
        ))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, _output: &Value) -> Result<(), PhaseError> {
        let services = Services::of(ctx)?;
        let reg = services.instances();
        let code = self.code()?;
        let ours = reg
            .get(&code)
            .await?
            .is_some_and(|rec| rec.created_by == Some(ctx.run_id));
        if !ours {
            return Ok(());
        }
        let lower = code.to_ascii_lowercase();
        let rt = services.runtime();
        for r in rt.owned_by(&lower).await? {
            ctx.note(format!("removing {} {}", r.kind, r.name));
            rt.remove_resource(&r).await?;
        }
        let deleted = services.secrets().delete_prefix(&lower).await?;
        if !deleted.is_empty() {
            ctx.note(format!("deleted {} secrets of {code}", deleted.len()));
        }
        reg.remove_if_created_by(&code, ctx.run_id).await?;
        Ok(())
    }

    async fn precheck(&self, ctx: &PhaseContext) -> Result<(), String> {
        let code = normalize_code(&self.code)?;
        let reg = Services::of(ctx).map_err(|e| e.to_string())?.instances();
        match self.refusal(reg, &code, runtime_kind(ctx)).await {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(why),
            // The database is the run's business: a run that cannot reach it fails there.
            Err(e) if !e.is_invalid_input() => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}
