//! What can go wrong with secrets. Messages name secrets, versions and key sources, never values
//! or key material.

use crate::key::KeySource;
use std::path::PathBuf;

/// What the master key must look like, repeated in every malformed-key message.
const KEY_FORMAT: &str = "expected 32 random bytes in standard base64 (44 characters ending in `=`, \
     e.g. from `openssl rand -base64 32`)";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A secret name (or prefix) that does not follow the naming rules.
    #[error(
        "invalid secret name `{name}`: {why} (names are `/`-separated segments of lower case \
         letters, digits, `-`, `_` and `.`, each starting with a letter or digit, e.g. \
         `usa/keycloak/admin-password`)"
    )]
    InvalidName { name: String, why: String },

    /// `ensure` was asked for a length it does not generate.
    #[error(
        "secret length {length} is out of range: it must be between {min} and {max} characters"
    )]
    InvalidLength {
        length: usize,
        min: usize,
        max: usize,
    },

    /// The master key is not 32 bytes of standard base64.
    #[error("the master key from {origin} is malformed: {problem}; {KEY_FORMAT}")]
    MalformedKey { origin: KeySource, problem: String },

    /// The master key file could not be read or created.
    #[error("cannot {action} the master key file {}: {error}", path.display())]
    KeyFile {
        action: &'static str,
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },

    /// The master key is well formed but is not the key the stored secrets were written with.
    #[error(
        "the master key does not match the one these secrets were written with (key from \
         {origin}); nothing was read or changed"
    )]
    WrongKey { origin: KeySource },

    /// There was no master key file, but the store holds secrets sealed with a key: the key
    /// file made in its place was removed again, so that restoring the original is all it takes.
    #[error(
        "the master key file {} is missing, but the state database holds secrets sealed with a \
         master key: restore that file (or set DIVE_MASTER_KEY); nothing was read or changed",
        path.display()
    )]
    MissingKey { path: PathBuf },

    /// The master key is right but this row does not decrypt: it was altered, or its ciphertext
    /// was copied from another name or version.
    #[error(
        "secret `{name}` version {version} cannot be decrypted: its stored ciphertext was altered \
         or belongs to another secret or version (the master key itself is correct)"
    )]
    Undecryptable { name: String, version: u32 },

    /// A stored row that is not even shaped right (nonce length, text encoding).
    #[error("secret `{name}` version {version} is unreadable: {why}")]
    Corrupt {
        name: String,
        version: u32,
        why: &'static str,
    },

    /// A version that should exist does not (a rotation of a secret never created).
    #[error(
        "secret `{0}` does not exist: it is created by the deploy or link that uses it (or `dive secrets ensure`)"
    )]
    NotFound(String),

    /// The store's versions do not allow the change (a later version was written meanwhile).
    #[error("{0}")]
    Conflict(String),

    #[error("secret store database: {0}")]
    Database(#[from] sqlx::Error),
}

impl SecretError {
    /// Whether the operator can fix the input (name, length, key format) rather than the system.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            SecretError::InvalidName { .. }
                | SecretError::InvalidLength { .. }
                | SecretError::MalformedKey { .. }
        )
    }
}

impl dive_error::Classify for SecretError {
    /// Whether trying again later can help (connection trouble, serialisation failures).
    fn is_retryable(&self) -> bool {
        match self {
            SecretError::Database(e) => dive_error::is_transient_sqlx(e),
            _ => false,
        }
    }

    /// The store lives in the state database.
    fn is_state_db_unavailable(&self) -> bool {
        matches!(self, SecretError::Database(e) if dive_error::is_db_unavailable(e))
    }
}
