//! Secrets: versioned values stored in the state database, encrypted at rest with AES-256-GCM
//! under a master key, and the `secret.ensure` phase type that creates them.
//!
//! # Master key
//! 32 random bytes written as standard base64 (44 characters), taken from `DIVE_MASTER_KEY`, or
//! (when that is unset or empty) from the file `DIVE_HOME/master.key`, which is created with mode
//! 0600 and a fresh random key on first use. A malformed key is an error that names where it came
//! from and what is expected, never the key itself ([`MasterKey`]).
//!
//! # Storage
//! Table `secrets (name, version, nonce, ciphertext, created_at)`, one row per version. Every
//! ciphertext is bound to its name and version as associated data, so a row copied onto another
//! name or version does not decrypt. Table `secret_keycheck` holds an encryption of a constant,
//! written on first use: a different master key is recognised before anything is read or written
//! ([`SecretError::WrongKey`]).
//!
//! # Values never leak
//! [`Secret`] prints `[redacted]` in `Debug` and `Display` and is zeroed when dropped; the value is
//! read with [`Secret::expose`]. Errors, phase outputs and logs carry names and versions only.
//!
//! # `secret.ensure`
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

mod ensure;
mod error;
mod key;
mod secret;
mod store;

pub use ensure::SecretEnsure;
pub use error::SecretError;
pub use key::{KeySource, MASTER_KEY_ENV, MASTER_KEY_FILE, MasterKey};
pub use secret::{Alphabet, Secret, validate_name};
pub use store::{SecretInfo, SecretStore};
