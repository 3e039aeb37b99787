//! dive-instances: ISO 3166-1 alpha-3 codes, the instance registry in the state database (roles
//! and port blocks), and what an instance's services look like right now ([`health`]). No engine
//! types: the phase types `instance.register` and `instance.reachable`, and the registration of
//! the `country-code` workflow parameter type, live in dive-phases.
//!
//! # Codes
//! An instance is named by an ISO 3166-1 alpha-3 code ([`COUNTRIES`], all 249 of them).
//! [`normalize_code`] accepts any case and returns upper case; dive-phases registers it as the
//! workflow parameter type `country-code`, so `params: { code: { type: country-code } }` rejects
//! an unknown code before anything runs.
//!
//! # Registry
//! Table `instances` (migration `migrations/instances/0003_instances.sql`, run by [`MIGRATOR`]
//! together with the engine's through `dive_engine::Store::open_with`): code, role (`hub` | `spoke`, at most one
//! hub), runtime, and a port block. [`Instances`] registers (idempotently), lists and removes.
//!
//! # Ports
//! Every instance gets the lowest free block of [`BLOCK_SIZE`] ports from the base port
//! ([`DEFAULT_PORT_BASE`], or `DIVE_PORT_BASE`): `postgres = base + 10 * block`, `keycloak =
//! +1` (HTTP), `management = +2` (Keycloak health and metrics); the other seven are reserved. The
//! block is allocated under a table lock in the registering transaction, and `port_block` is
//! unique in the database, so no two instances share a port whatever their codes and however
//! many register at once. Ports are computed from the current base (1024..=65526): changing
//! `DIVE_PORT_BASE` moves every instance on its next deploy.
//!
//! # Lock
//! Runs on an instance use the lock key `instance:<CODE>` ([`lock_key`]): deploys, federation,
//! and the `instance-down` / `instance-reset` workflows behind `dive hub|spoke down|reset`, so
//! none of them acts on an instance while another does. The engine takes the lock; the registry
//! takes none itself.

mod countries;
pub mod health;
mod registry;

pub use countries::COUNTRIES;
pub use registry::{
    BLOCK_SIZE, DEFAULT_PORT_BASE, InstanceError, InstanceRecord, Instances, NO_HUB, PORT_BASE_ENV,
    Ports, Role, lock_key,
};

/// The migrations of table `instances` (`migrations/instances/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/instances");

/// The English short name of an ISO 3166-1 alpha-3 code (upper case), if it is one.
pub fn country_name(code: &str) -> Option<&'static str> {
    COUNTRIES
        .binary_search_by(|(c, _)| (*c).cmp(code))
        .ok()
        .map(|i| COUNTRIES[i].1)
}

/// An ISO 3166-1 alpha-3 code in any case, returned in upper case; anything else is an error
/// that names the value (upper-cased, as codes appear in output).
pub fn normalize_code(s: &str) -> Result<String, String> {
    let upper = s.trim().to_ascii_uppercase();
    if country_name(&upper).is_some() {
        Ok(upper)
    } else {
        Err(format!(
            "`{upper}` is not an ISO 3166-1 alpha-3 country code"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_complete_sorted_and_well_formed() {
        assert_eq!(COUNTRIES.len(), 249);
        for pair in COUNTRIES.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
        for (code, name) in COUNTRIES {
            assert!(code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()));
            assert!(!name.is_empty());
        }
    }

    #[test]
    fn codes_are_normalised() {
        assert_eq!(normalize_code("fra").unwrap(), "FRA");
        assert_eq!(normalize_code("Usa").unwrap(), "USA");
        assert_eq!(normalize_code(" gbr ").unwrap(), "GBR");
        assert_eq!(country_name("DEU"), Some("Germany"));
        assert_eq!(country_name("deu"), None);
        for bad in ["XYZ", "xyz", "", "FR", "FRAN", "F1A", "ÅLA", "UK"] {
            let e = normalize_code(bad).unwrap_err();
            assert!(
                e.contains("is not an ISO 3166-1 alpha-3 country code"),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            normalize_code("xyz").unwrap_err(),
            "`XYZ` is not an ISO 3166-1 alpha-3 country code"
        );
        for (code, _) in COUNTRIES {
            assert_eq!(normalize_code(&code.to_ascii_lowercase()).unwrap(), code);
        }
    }
}
