//! dive-secrets: versioned values stored in the state database, encrypted at rest with AES-256-GCM
//! under a master key. No engine types: the `secret.ensure` phase type that creates secrets in a
//! workflow lives in dive-phases and calls [`SecretStore::ensure`].
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
//! # Ensure
//! [`SecretStore::ensure`] returns the latest version of a secret, or generates version 1 when
//! there is none. Concurrent ensures of one name serialise on a transaction-scoped advisory lock,
//! so exactly one of them creates it. Secrets are removed when an instance is reset
//! ([`SecretStore::delete_prefix`]).
//!
//! # Migrations
//! The tables are this crate's: [`MIGRATOR`] (`migrations/secrets/`). The state database applies
//! it together with the engine's (`dive_engine::Store::open_with`).

mod error;
mod key;
mod secret;
mod store;

pub use error::SecretError;
pub use key::{KeySource, MASTER_KEY_ENV, MASTER_KEY_FILE, MasterKey};
pub use secret::{Alphabet, Secret, owners, validate_name};
pub use store::{MAX_LENGTH, MIN_LENGTH, SecretInfo, SecretStore};

/// The migrations of tables `secrets` and `secret_keycheck` (`migrations/secrets/`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/secrets");
