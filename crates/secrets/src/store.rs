//! The secret store: versioned, encrypted secrets in the state database.

use crate::error::SecretError;
use crate::key::{KeySource, MasterKey};
use crate::secret::{Alphabet, Secret, validate_name};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use std::fmt;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

/// Associated data of the key check value, and the constant it encrypts.
const KEYCHECK_AAD: &[u8] = b"dive/keycheck/v1";
const KEYCHECK_PLAINTEXT: &[u8] = b"dive master key check";
/// Shortest and longest value [`SecretStore::ensure`] generates.
pub const MIN_LENGTH: usize = 8;
pub const MAX_LENGTH: usize = 4096;

/// A secret's metadata, as `dive secrets list` shows it: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretInfo {
    pub name: String,
    /// How many versions are stored.
    pub versions: u32,
    /// The latest version number.
    pub latest: u32,
    /// When the first stored version was written.
    pub created_at: DateTime<Utc>,
    /// When the latest version was written.
    pub updated_at: DateTime<Utc>,
}

/// Secrets in the state database, encrypted under one master key. Cheap to share (`Arc`); put
/// it in the engine's `Services` as a `SecretStore` (not an `Arc<SecretStore>`).
///
/// Every operation that reads or writes a value first checks the master key against the stored
/// key check value (once per store), so a wrong key fails before anything is read or written.
pub struct SecretStore {
    pool: PgPool,
    cipher: Aes256Gcm,
    origin: KeySource,
    key_checked: OnceCell<()>,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("key_source", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Associated data binding a ciphertext to its name and version.
fn aad(name: &str, version: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(name.len() + 24);
    aad.extend_from_slice(b"dive/secret/v1\0");
    aad.extend_from_slice(name.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

fn nonce() -> [u8; 12] {
    let mut n = [0u8; 12];
    rand::rng().fill_bytes(&mut n);
    n
}

/// Version numbers are `integer >= 1` in the table.
fn version_from_db(v: i32) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn check_length(length: usize) -> Result<(), SecretError> {
    if (MIN_LENGTH..=MAX_LENGTH).contains(&length) {
        Ok(())
    } else {
        Err(SecretError::InvalidLength {
            length,
            min: MIN_LENGTH,
            max: MAX_LENGTH,
        })
    }
}

/// Serialises writers of one secret name for the rest of the transaction.
async fn lock_name(conn: &mut PgConnection, name: &str) -> Result<(), SecretError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('dive.secret:' || $1, 0))")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

impl SecretStore {
    pub fn new(pool: PgPool, key: MasterKey) -> SecretStore {
        SecretStore {
            pool,
            cipher: Aes256Gcm::new_from_slice(key.bytes()).expect("a master key is 32 bytes"),
            origin: key.source().clone(),
            key_checked: OnceCell::new(),
        }
    }

    /// Where the master key came from.
    pub fn key_source(&self) -> &KeySource {
        &self.origin
    }

    fn encrypt(&self, nonce: &[u8; 12], msg: &[u8], aad: &[u8]) -> Vec<u8> {
        self.cipher
            .encrypt(&Nonce::from(*nonce), Payload { msg, aad })
            .expect("AES-GCM encryption of a small message cannot fail")
    }

    fn decrypt(&self, nonce: &[u8], ciphertext: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let nonce: [u8; 12] = nonce.try_into().ok()?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }

    fn open(
        &self,
        name: &str,
        version: u32,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Secret, SecretError> {
        if nonce.len() != 12 {
            return Err(SecretError::Corrupt {
                name: name.to_string(),
                version,
                why: "its nonce is not 12 bytes",
            });
        }
        let plain = self
            .decrypt(nonce, ciphertext, &aad(name, version))
            .ok_or_else(|| SecretError::Undecryptable {
                name: name.to_string(),
                version,
            })?;
        let text = std::str::from_utf8(&plain).map_err(|_| SecretError::Corrupt {
            name: name.to_string(),
            version,
            why: "its value is not UTF-8 text",
        })?;
        Ok(Secret::new(text))
    }

    fn seal(&self, name: &str, version: u32, value: &Secret) -> ([u8; 12], Vec<u8>) {
        let nonce = nonce();
        let ciphertext = self.encrypt(&nonce, value.expose().as_bytes(), &aad(name, version));
        (nonce, ciphertext)
    }

    /// Checks the master key against the stored key check value, writing that value on first
    /// use. When there is none yet but secrets exist (the check row was lost), one of them must
    /// decrypt first. Done once per store; a wrong key is [`SecretError::WrongKey`].
    pub async fn verify_key(&self) -> Result<(), SecretError> {
        self.key_checked
            .get_or_try_init(|| self.check_key())
            .await
            .map(|_| ())
    }

    /// Like [`SecretStore::verify_key`], but writes nothing: with no key check value stored
    /// yet, the oldest secret (if any) must decrypt. For a dry run, whose key may exist in
    /// memory only.
    pub async fn verify_key_read_only(&self) -> Result<(), SecretError> {
        self.read_only_key_check().await?;
        // Reads after this one must not write the check value either.
        let _ = self.key_checked.set(());
        Ok(())
    }

    async fn read_only_key_check(&self) -> Result<(), SecretError> {
        let wrong = || match &self.origin {
            KeySource::Created(path) => SecretError::MissingKey { path: path.clone() },
            origin => SecretError::WrongKey {
                origin: origin.clone(),
            },
        };
        let stored: Option<(Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT nonce, ciphertext FROM secret_keycheck")
                .fetch_optional(&self.pool)
                .await?;
        if let Some((nonce, ciphertext)) = stored {
            return match self.decrypt(&nonce, &ciphertext, KEYCHECK_AAD) {
                Some(p) if p.as_slice() == KEYCHECK_PLAINTEXT => Ok(()),
                _ => Err(wrong()),
            };
        }
        let existing: Option<(String, i32, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT name, version, nonce, ciphertext FROM secrets ORDER BY created_at LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        match existing {
            Some((name, version, nonce, ciphertext))
                if self
                    .decrypt(&nonce, &ciphertext, &aad(&name, version_from_db(version)))
                    .is_none() =>
            {
                Err(wrong())
            }
            _ => Ok(()),
        }
    }

    async fn check_key(&self) -> Result<(), SecretError> {
        let wrong = || match &self.origin {
            // The key file was missing and this process made a new one: take it back, so that
            // the next command does not mistake it for the real key.
            KeySource::Created(path) => {
                let _ = std::fs::remove_file(path);
                SecretError::MissingKey { path: path.clone() }
            }
            origin => SecretError::WrongKey {
                origin: origin.clone(),
            },
        };
        let verify =
            |nonce: &[u8], ciphertext: &[u8]| match self.decrypt(nonce, ciphertext, KEYCHECK_AAD) {
                Some(p) if p.as_slice() == KEYCHECK_PLAINTEXT => Ok(()),
                _ => Err(wrong()),
            };
        let stored: Option<(Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT nonce, ciphertext FROM secret_keycheck")
                .fetch_optional(&self.pool)
                .await?;
        if let Some((nonce, ciphertext)) = stored {
            return verify(&nonce, &ciphertext);
        }
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('dive.secret-keycheck', 0))")
            .execute(&mut *tx)
            .await?;
        let stored: Option<(Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT nonce, ciphertext FROM secret_keycheck")
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((nonce, ciphertext)) = stored {
            return verify(&nonce, &ciphertext);
        }
        let existing: Option<(String, i32, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT name, version, nonce, ciphertext FROM secrets ORDER BY created_at LIMIT 1",
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((name, version, nonce, ciphertext)) = existing
            && self
                .decrypt(&nonce, &ciphertext, &aad(&name, version_from_db(version)))
                .is_none()
        {
            return Err(wrong());
        }
        let nonce = nonce();
        let ciphertext = self.encrypt(&nonce, KEYCHECK_PLAINTEXT, KEYCHECK_AAD);
        sqlx::query("INSERT INTO secret_keycheck (nonce, ciphertext) VALUES ($1, $2)")
            .bind(&nonce[..])
            .bind(ciphertext)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The latest version of `name` and its number.
    pub async fn get(&self, name: &str) -> Result<Option<(Secret, u32)>, SecretError> {
        validate_name(name)?;
        self.verify_key().await?;
        let row: Option<(i32, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT version, nonce, ciphertext FROM secrets WHERE name = $1 \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(v, nonce, ct)| {
            let v = version_from_db(v);
            self.open(name, v, &nonce, &ct).map(|s| (s, v))
        })
        .transpose()
    }

    /// One version of `name`.
    pub async fn get_version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<Secret>, SecretError> {
        validate_name(name)?;
        self.verify_key().await?;
        let Ok(v) = i32::try_from(version) else {
            return Ok(None);
        };
        let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT nonce, ciphertext FROM secrets WHERE name = $1 AND version = $2",
        )
        .bind(name)
        .bind(v)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(nonce, ct)| self.open(name, version, &nonce, &ct))
            .transpose()
    }

    /// Stores `value` as a new version of `name` (1 for a new name) and returns its number.
    pub async fn put(&self, name: &str, value: &Secret) -> Result<u32, SecretError> {
        validate_name(name)?;
        self.verify_key().await?;
        let mut tx = self.pool.begin().await?;
        lock_name(&mut tx, name).await?;
        let latest: i32 =
            sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM secrets WHERE name = $1")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        let version = version_from_db(latest) + 1;
        let (nonce, ciphertext) = self.seal(name, version, value);
        sqlx::query(
            "INSERT INTO secrets (name, version, nonce, ciphertext) VALUES ($1, $2, $3, $4)",
        )
        .bind(name)
        .bind(latest + 1)
        .bind(&nonce[..])
        .bind(ciphertext)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(secret = name, version, "stored a new secret version");
        Ok(version)
    }

    /// The version of `name` that `origin` minted, if any.
    pub async fn minted_by(&self, name: &str, origin: &str) -> Result<Option<u32>, SecretError> {
        validate_name(name)?;
        let v: Option<i32> =
            sqlx::query_scalar("SELECT version FROM secrets WHERE name = $1 AND origin = $2")
                .bind(name)
                .bind(origin)
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.map(version_from_db))
    }

    /// Mints a new version of `name` for `origin` (a rotation run: `run:<id>`): a random value
    /// of `length` characters from `alphabet`, stored as the next version. Once per origin: when
    /// `origin` already minted a version of `name` (a run resumed after a crash), that version
    /// is returned with `false` and nothing is written. `name` must exist (a rotation replaces
    /// a secret, it does not create one).
    pub async fn mint(
        &self,
        name: &str,
        origin: &str,
        length: usize,
        alphabet: Alphabet,
    ) -> Result<(u32, bool), SecretError> {
        check_length(length)?;
        self.insert_once(name, origin, || alphabet.generate(length), true)
            .await
    }

    /// Records `value` as the next version of `name` for `origin` (version 1 for a new name),
    /// once per origin like [`SecretStore::mint`]: for values another system generates (a
    /// signing key Keycloak made), committed as soon as they are read back.
    pub async fn record(
        &self,
        name: &str,
        origin: &str,
        value: &Secret,
    ) -> Result<(u32, bool), SecretError> {
        self.insert_once(name, origin, || value.clone(), false)
            .await
    }

    /// Starts a transaction that holds `name`'s writer lock, and reads its latest version and
    /// the version `origin` wrote (if any).
    async fn lock_versions(
        &self,
        name: &str,
        origin: &str,
    ) -> Result<
        (
            sqlx::Transaction<'static, sqlx::Postgres>,
            Option<i32>,
            Option<i32>,
        ),
        SecretError,
    > {
        validate_name(name)?;
        self.verify_key().await?;
        let mut tx = self.pool.begin().await?;
        lock_name(&mut tx, name).await?;
        let (latest, mine): (Option<i32>, Option<i32>) = sqlx::query_as(
            "SELECT max(version), max(version) FILTER (WHERE origin = $2) \
             FROM secrets WHERE name = $1",
        )
        .bind(name)
        .bind(origin)
        .fetch_one(&mut *tx)
        .await?;
        Ok((tx, latest, mine))
    }

    async fn insert_once(
        &self,
        name: &str,
        origin: &str,
        value: impl FnOnce() -> Secret,
        must_exist: bool,
    ) -> Result<(u32, bool), SecretError> {
        let (mut tx, latest, mine) = self.lock_versions(name, origin).await?;
        if let Some(v) = mine {
            return Ok((version_from_db(v), false));
        }
        if latest.is_none() && must_exist {
            return Err(SecretError::NotFound(name.to_string()));
        }
        let latest = latest.unwrap_or(0);
        let version = version_from_db(latest) + 1;
        let (nonce, ciphertext) = self.seal(name, version, &value());
        sqlx::query(
            "INSERT INTO secrets (name, version, nonce, ciphertext, origin) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(name)
        .bind(latest + 1)
        .bind(&nonce[..])
        .bind(ciphertext)
        .bind(origin)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            secret = name,
            version,
            "stored a new secret version for a rotation"
        );
        Ok((version, true))
    }

    /// Removes the version of `name` that `origin` minted, making the one before it current
    /// again (a rotation rolled back). Refused while a later version exists: that one was made
    /// from it. Returns the version removed, `None` when there was none.
    pub async fn unmint(&self, name: &str, origin: &str) -> Result<Option<u32>, SecretError> {
        let (mut tx, latest, mine) = self.lock_versions(name, origin).await?;
        let Some(mine) = mine else {
            return Ok(None);
        };
        if latest != Some(mine) {
            return Err(SecretError::Conflict(format!(
                "secret `{name}`: version {} was written after version {mine}, which is not removed",
                latest.unwrap_or_default()
            )));
        }
        sqlx::query("DELETE FROM secrets WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(mine)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(
            secret = name,
            version = mine,
            "removed a minted secret version"
        );
        Ok(Some(version_from_db(mine)))
    }

    /// Deletes all but the latest `keep` versions of `name` (at least one is kept); returns how
    /// many it deleted.
    pub async fn prune(&self, name: &str, keep: u32) -> Result<u64, SecretError> {
        validate_name(name)?;
        let keep = i64::from(keep.max(1));
        let done = sqlx::query(
            "DELETE FROM secrets WHERE name = $1 AND version <= \
             (SELECT max(version) FROM secrets WHERE name = $1) - $2",
        )
        .bind(name)
        .bind(keep)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Makes sure `name` exists: returns its latest version and `false` when it does (after
    /// checking that it decrypts), otherwise stores a random value of `length` characters from
    /// `alphabet` as version 1 and returns `(1, true)`. Concurrent calls create it once.
    pub async fn ensure(
        &self,
        name: &str,
        length: usize,
        alphabet: Alphabet,
    ) -> Result<(u32, bool), SecretError> {
        self.ensure_for(name, length, alphabet, None).await
    }

    /// [`SecretStore::ensure`], recording `origin` (a run: `run:<id>`) on the version it
    /// creates, so that the run's compensation can tell — with [`SecretStore::minted_by`] —
    /// that it created the secret, even when a later attempt found it there.
    pub async fn ensure_for(
        &self,
        name: &str,
        length: usize,
        alphabet: Alphabet,
        origin: Option<&str>,
    ) -> Result<(u32, bool), SecretError> {
        check_length(length)?;
        let (_, version, created) = self
            .ensure_with(name, origin, || alphabet.generate(length))
            .await?;
        Ok((version, created))
    }

    /// Makes sure `name` exists, storing `value()` as version 1 when it does not: returns the
    /// latest value, its version and whether this call created it. Concurrent calls create it
    /// once, and all of them return that one value.
    pub async fn ensure_value(
        &self,
        name: &str,
        value: impl FnOnce() -> Secret,
    ) -> Result<(Secret, u32, bool), SecretError> {
        self.ensure_with(name, None, value).await
    }

    async fn ensure_with(
        &self,
        name: &str,
        origin: Option<&str>,
        value: impl FnOnce() -> Secret,
    ) -> Result<(Secret, u32, bool), SecretError> {
        validate_name(name)?;
        self.verify_key().await?;
        let mut tx = self.pool.begin().await?;
        lock_name(&mut tx, name).await?;
        let latest: Option<(i32, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT version, nonce, ciphertext FROM secrets WHERE name = $1 \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((v, nonce, ct)) = latest {
            let v = version_from_db(v);
            let value = self.open(name, v, &nonce, &ct)?;
            return Ok((value, v, false));
        }
        let value = value();
        let (nonce, ciphertext) = self.seal(name, 1, &value);
        sqlx::query(
            "INSERT INTO secrets (name, version, nonce, ciphertext, origin) \
             VALUES ($1, 1, $2, $3, $4)",
        )
        .bind(name)
        .bind(&nonce[..])
        .bind(ciphertext)
        .bind(origin)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(secret = name, version = 1, "generated a new secret");
        Ok((value, 1, true))
    }

    /// Every secret's metadata, by name. Reads no value, so it does not need the right key.
    pub async fn list(&self) -> Result<Vec<SecretInfo>, SecretError> {
        self.infos(None).await
    }

    /// One secret's metadata, or `None`. Reads no value.
    pub async fn info(&self, name: &str) -> Result<Option<SecretInfo>, SecretError> {
        validate_name(name)?;
        Ok(self.infos(Some(name)).await?.pop())
    }

    async fn infos(&self, name: Option<&str>) -> Result<Vec<SecretInfo>, SecretError> {
        type Row = (String, i64, i32, DateTime<Utc>, DateTime<Utc>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT name, count(*), max(version), min(created_at), \
                    (array_agg(created_at ORDER BY version DESC))[1] \
             FROM secrets WHERE $1::text IS NULL OR name = $1 GROUP BY name ORDER BY name",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(name, versions, latest, created_at, updated_at)| SecretInfo {
                    name,
                    versions: u32::try_from(versions).unwrap_or(u32::MAX),
                    latest: version_from_db(latest),
                    created_at,
                    updated_at,
                },
            )
            .collect())
    }

    /// Deletes every version of every secret named `prefix` or below it (`prefix/...`),
    /// segment-wise: `usa` removes `usa/keycloak/x` but not `usability/x`. A trailing `/` is
    /// ignored. Returns the names removed. For resetting an instance; needs the right key so a
    /// misconfigured run cannot wipe secrets it could not have written.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<Vec<String>, SecretError> {
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        validate_name(prefix)?;
        self.verify_key().await?;
        let mut names: Vec<String> = sqlx::query_scalar(
            "DELETE FROM secrets WHERE name = $1 OR left(name, length($1) + 1) = $1 || '/' \
             RETURNING name",
        )
        .bind(prefix)
        .fetch_all(&self.pool)
        .await?;
        names.sort();
        names.dedup();
        if !names.is_empty() {
            tracing::info!(prefix, count = names.len(), "deleted secrets");
        }
        Ok(names)
    }
}
