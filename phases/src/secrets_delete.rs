//! `secrets.delete`: deletes every version of every secret named `prefix` or below it
//! (`prefix/…`, segment-wise: `usa` removes `usa/keycloak/admin-password`, not `usability/x`).
//!
//! ```yaml
//! - id: secrets
//!   type: secrets.delete
//!   prefix: ${phases.remove.output.code_lower}   # instance secrets are lower case (`usa/…`)
//! ```
//! Output `{prefix, deleted: [names]}` — names only, never values. The store checks the master
//! key first, so a run with the wrong key deletes nothing.
//!
//! Idempotency: deleting what is already gone succeeds with `deleted: []`.
//! Compensation: none — what was removed cannot be brought back (a deploy generates new
//! secrets).

use crate::context::Services;
use dive_engine::{Phase, PhaseContext, PhaseError, async_trait, typetag};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsDelete {
    pub prefix: String,
}

#[typetag::serde(name = "secrets.delete")]
#[async_trait]
impl Phase for SecretsDelete {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let deleted = Services::of(ctx)?
            .secrets()
            .delete_prefix(&self.prefix)
            .await?;
        Ok(json!({ "prefix": self.prefix, "deleted": deleted }))
    }
}
