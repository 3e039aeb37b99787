//! dive-phases: the phase types dive workflows are made of. Each type is one struct registered
//! with typetag; the engine finds it by its `type:` name.

pub mod context;
pub mod db;
pub mod exec;
pub mod federation;
pub mod instance;
pub mod keycloak;
pub mod late;
pub mod noop;
pub mod postgres_database;
pub mod rotation;
pub mod runtime_cleanup;
pub mod secret_ensure;
pub mod secrets_delete;
pub mod service;
pub mod sleep;
pub mod tls;

/// Forces this crate to be linked so its phase types are registered with typetag, and registers
/// its workflow parameter types (`country-code`).
pub use context::{Config, Services, StartupError};

pub fn register() {
    instance::register_param_types();
    dive_engine::params::register_param_type(rotation::KINDS_TYPE, rotation::check_kinds);
}
