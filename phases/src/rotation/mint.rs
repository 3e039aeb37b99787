//! `rotation.mint`: a new version of every secret the selected kinds rotate, committed to the
//! store before anything uses it.
//!
//! ```yaml
//! - id: mint
//!   type: rotation.mint
//!   code: "${params.code}"
//!   only: "${params.only}"            # kinds; `all` by default
//!   older_than: "${params.older_than}" # skip secrets younger than this; `0s` by default
//! ```
//! Output `{minted: [{secret, version, previous}], skipped: [{secret, version, age_s}]}`, never
//! a value.
//!
//! Idempotency: each version is marked with this run (`run:<id>`); a re-run finds it and mints
//! nothing (a secret this run already minted counts as rotated even though it is young now).
//!
//! Compensation: removes the versions this run minted, so the previous ones are current again
//! (the later phases' compensations have put the previous values back in Keycloak first).
//! Tolerates versions already removed.

use super::{
    default_only, directions, needed_secrets, origin, parse_older_than, selected, zero_duration,
};
use crate::context::Services;
use dive_engine::{
    Action, Phase, PhaseContext, PhaseError, PhasePlan, SENSITIVE, async_trait, typetag,
};
use dive_secrets::Alphabet;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationMint {
    pub code: String,
    #[serde(default = "default_only")]
    pub only: String,
    /// A duration (`30d`, `12h`, `0s`).
    #[serde(default = "zero_duration")]
    pub older_than: String,
}

impl RotationMint {
    fn older_than(&self) -> Result<Duration, PhaseError> {
        parse_older_than(&self.older_than)
    }

    /// The secrets the selected kinds rotate, with the length of a new value.
    async fn secrets(&self, ctx: &PhaseContext) -> Result<Vec<(String, usize)>, PhaseError> {
        let code = crate::federation::code(&self.code)?;
        // The links through the registry: a partner that is not deployed fails here.
        directions(ctx, &code).await?;
        let partners = super::partners(Services::of(ctx)?.pool(), &code)
            .await
            .map_err(PhaseError::retryable)?;
        let mut out = Vec::new();
        for s in needed_secrets(&code, &partners) {
            if selected(&self.only, s.kind)? {
                out.push((s.name, s.length));
            }
        }
        Ok(out)
    }

    /// A secret's metadata and the age of its latest version; it must exist.
    async fn age(
        &self,
        store: &dive_secrets::SecretStore,
        name: &str,
    ) -> Result<(dive_secrets::SecretInfo, Duration), PhaseError> {
        let info = store.info(name).await?.ok_or_else(|| {
            PhaseError::fatal(format!(
                "secret `{name}` does not exist: run `dive secrets ensure {}` or link again",
                self.code
            ))
        })?;
        let age = (chrono::Utc::now() - info.updated_at)
            .to_std()
            .unwrap_or_default();
        Ok((info, age))
    }

    async fn mint_all(
        &self,
        ctx: &PhaseContext,
        names: &[(String, usize)],
        older_than: Duration,
        minted: &mut Vec<Value>,
        skipped: &mut Vec<Value>,
    ) -> Result<(), PhaseError> {
        let store = Services::of(ctx)?.secrets();
        let origin = origin(ctx);
        for (name, length) in names {
            let (info, age) = self.age(store, name).await?;
            let mine = store.minted_by(name, &origin).await?;
            if mine.is_none() && age < older_than {
                skipped
                    .push(json!({"secret": name, "version": info.latest, "age_s": age.as_secs()}));
                continue;
            }
            let (version, _) = store
                .mint(name, &origin, *length, Alphabet::Alphanumeric)
                .await?;
            minted.push(json!({"secret": name, "version": version, "previous": version - 1}));
        }
        Ok(())
    }
}

#[typetag::serde(name = "rotation.mint")]
#[async_trait]
impl Phase for RotationMint {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let older_than = self.older_than()?;
        let store = Services::of(ctx)?.secrets();
        let origin = origin(ctx);
        let mut minted = Vec::new();
        let mut skipped = Vec::new();
        let names = self.secrets(ctx).await?;
        let result = self
            .mint_all(ctx, &names, older_than, &mut minted, &mut skipped)
            .await;
        if let Err(e) = result {
            // Nothing uses a version yet: take back what this run minted, so a failed mint
            // leaves the store as it was (a resume mints again).
            for (name, _) in &names {
                let _ = store.unmint(name, &origin).await;
            }
            return Err(e);
        }
        ctx.note(format!(
            "{} new secret version(s), {} skipped",
            minted.len(),
            skipped.len()
        ));
        Ok(json!({ "minted": minted, "skipped": skipped }))
    }

    /// Each secret that would get a new version (or be skipped, younger than `older_than`).
    /// What the later phases do with the new versions is known after apply. Only reads.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let older_than = self.older_than()?;
        let store = Services::of(ctx)?.secrets();
        let mut changes = Vec::new();
        let (mut minted, mut skipped) = (Vec::new(), Vec::new());
        for (name, _) in self.secrets(ctx).await? {
            let (info, age) = self.age(store, &name).await?;
            if age < older_than {
                skipped
                    .push(json!({"secret": name, "version": info.latest, "age_s": age.as_secs()}));
                continue;
            }
            let version = info.latest + 1;
            changes.push(
                crate::secret_ensure::secret_change(&name, Action::Update)
                    .field("version", info.latest, version)
                    .field("value", SENSITIVE, SENSITIVE),
            );
            minted.push(json!({"secret": name, "version": version, "previous": info.latest}));
        }
        Ok(PhasePlan::changes(
            changes,
            json!({ "minted": minted, "skipped": skipped }),
        ))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, output: &Value) -> Result<(), PhaseError> {
        let store = Services::of(ctx)?.secrets();
        let origin = origin(ctx);
        for m in output["minted"].as_array().into_iter().flatten() {
            if let Some(name) = m["secret"].as_str()
                && let Some(v) = store.unmint(name, &origin).await?
            {
                tracing::info!(
                    secret = name,
                    version = v,
                    "removed the minted version (compensation)"
                );
            }
        }
        Ok(())
    }

    async fn precheck(&self, _ctx: &PhaseContext) -> Result<(), String> {
        if self.older_than.contains("${") {
            return Ok(());
        }
        self.older_than().map(|_| ()).map_err(|e| e.to_string())
    }
}
