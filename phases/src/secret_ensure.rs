//! `secret.ensure`: makes sure a secret exists, generating a random value when it does not.
//!
//! ```yaml
//! - id: admin-password
//!   type: secret.ensure
//!   name: usa/keycloak/admin-password
//!   length: 32            # optional, default 32 (8..=4096)
//!   alphabet: alphanumeric # optional: alphanumeric (default), lowercase, hex, base64url, digits
//! ```
//! Output `{name, version, created}` and never the value; later phases read the value from the
//! [`SecretStore`] by name. The store must be registered in the engine's services
//! (`services.insert(SecretStore::new(..))`); without it the phase fails fatally.
//!
//! Idempotency: ensure semantics. If the secret exists its latest version is returned with
//! `created: false`; otherwise version 1 is generated. Concurrent ensures of one name serialise on
//! a transaction-scoped advisory lock, so exactly one of them creates it.
//!
//! Compensation: none, on purpose. A generated secret may already be in use by a service configured
//! in an earlier run (or by an earlier phase of this one that is not compensated), and deleting it
//! would strand that service with a password nobody knows. Secrets are removed when an instance is
//! reset ([`SecretStore::delete_prefix`]).

use crate::context::Services;
use dive_engine::{
    Action, Change, Phase, PhaseContext, PhaseError, PhasePlan, SENSITIVE, async_trait, typetag,
};
use dive_secrets::{Alphabet, MAX_LENGTH, MIN_LENGTH};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

fn default_length() -> usize {
    32
}

/// Checks the range when the workflow is validated rather than when the phase runs.
fn length<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if (MIN_LENGTH..=MAX_LENGTH).contains(&n) {
        Ok(n)
    } else {
        Err(serde::de::Error::custom(format!(
            "length {n} is out of range: it must be between {MIN_LENGTH} and {MAX_LENGTH}"
        )))
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretEnsure {
    /// e.g. `usa/keycloak/admin-password`.
    pub name: String,
    /// Characters in a generated value (8..=4096, default 32). Ignored when the secret exists.
    #[serde(default = "default_length", deserialize_with = "length")]
    pub length: usize,
    /// Characters a generated value is made of (default `alphanumeric`).
    #[serde(default)]
    pub alphabet: Alphabet,
}

/// A planned change of secret `name`, under the instance it belongs to: `fra/…` to FRA,
/// `federation/usa/fra/…` to USA (the side whose client holds it).
pub(crate) fn secret_change(name: &str, action: Action) -> Change {
    let is_code = |p: &&str| p.len() == 3 && p.bytes().all(|b| b.is_ascii_alphabetic());
    let mut parts = name.split('/');
    let owner = match parts.next() {
        Some("federation") => parts.next(),
        first => first,
    }
    .filter(is_code);
    Change::new(owner, format!("secret {name}"), action)
}

#[typetag::serde(name = "secret.ensure")]
#[async_trait]
impl Phase for SecretEnsure {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let store = Services::of(ctx)?.secrets();
        let (version, created) = store.ensure(&self.name, self.length, self.alphabet).await?;
        Ok(json!({ "name": self.name, "version": version, "created": created }))
    }

    /// An existing secret stays; a missing one would be generated (its value is never shown).
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let store = Services::of(ctx)?.secrets();
        Ok(match store.get(&self.name).await? {
            Some((_, version)) => PhasePlan::unchanged(
                json!({ "name": self.name, "version": version, "created": false }),
            ),
            None => PhasePlan::changes(
                vec![secret_change(&self.name, Action::Create).field(
                    "value",
                    Value::Null,
                    SENSITIVE,
                )],
                json!({ "name": self.name, "version": 1, "created": true }),
            ),
        })
    }
}
