//! The instance phase types, on the registry of dive-instances: `instance.register` (registers
//! an instance and allocates its port block), `instance.reachable` (its Keycloak answers),
//! `instance.stop` (stops its services), `instance.remove` (removes its services, data and
//! leftovers) and `instance.unregister` (releases its registration), and the workflow parameter
//! type `country-code` ([`register_param_types`]).

mod phase;
mod reachable;
mod remove;
mod stop;
mod unregister;

pub use phase::InstanceRegister;
pub use reachable::InstanceReachable;
pub use remove::InstanceRemove;
pub use stop::InstanceStop;
pub use unregister::InstanceUnregister;

use crate::context::Services;
use dive_engine::{PhaseContext, PhaseError};

/// A country code in any case, upper-cased; a phase failure (not retried) otherwise.
fn code_of(code: &str) -> Result<String, PhaseError> {
    dive_instances::normalize_code(code).map_err(PhaseError::fatal)
}

/// Precheck of phases that act on an instance's services on the run's runtime: a registered
/// instance must be on that runtime (elsewhere they would act on nothing and say they did);
/// `registered` also requires a registration.
async fn registered_here(ctx: &PhaseContext, code: &str, registered: bool) -> Result<(), String> {
    let code = dive_instances::normalize_code(code)?;
    let services = Services::of(ctx).map_err(|e| e.to_string())?;
    let kind = services.runtime().kind();
    match services.instances().get(&code).await {
        Ok(Some(rec)) if rec.runtime != kind => Err(format!(
            "{code} is deployed on the {} runtime, not on {kind}: run with --runtime {}",
            rec.runtime, rec.runtime
        )),
        Ok(None) if registered => Err(format!("{code} is not deployed")),
        // The database is the run's business: a run that cannot reach it fails there.
        _ => Ok(()),
    }
}

/// The parameter type name workflows use: `params: { code: { type: country-code } }`.
pub const COUNTRY_CODE_TYPE: &str = "country-code";

/// Registers the workflow parameter types of instances with the engine: `country-code` accepts an
/// ISO 3166-1 alpha-3 code in any case and yields it in upper case
/// ([`dive_instances::normalize_code`]).
pub fn register_param_types() {
    dive_engine::params::register_param_type(COUNTRY_CODE_TYPE, dive_instances::normalize_code);
}
