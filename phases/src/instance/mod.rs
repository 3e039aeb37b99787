//! The instance phase types, on the registry of dive-instances: `instance.register` (registers
//! an instance and allocates its port block) and `instance.reachable` (its Keycloak answers), and
//! the workflow parameter type `country-code` ([`register_param_types`]).

mod phase;
mod reachable;

pub use phase::InstanceRegister;
pub use reachable::InstanceReachable;

/// The parameter type name workflows use: `params: { code: { type: country-code } }`.
pub const COUNTRY_CODE_TYPE: &str = "country-code";

/// Registers the workflow parameter types of instances with the engine: `country-code` accepts an
/// ISO 3166-1 alpha-3 code in any case and yields it in upper case
/// ([`dive_instances::normalize_code`]).
pub fn register_param_types() {
    dive_engine::params::register_param_type(COUNTRY_CODE_TYPE, dive_instances::normalize_code);
}
