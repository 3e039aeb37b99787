//! The master key: where it comes from, how it is checked, and how the key file is created.

use crate::error::SecretError;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Environment variable that holds the master key (standard base64 of 32 bytes).
pub const MASTER_KEY_ENV: &str = "DIVE_MASTER_KEY";
/// File under DIVE_HOME that holds the master key when the environment variable is unset.
pub const MASTER_KEY_FILE: &str = "master.key";

/// Where a master key came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The `DIVE_MASTER_KEY` environment variable.
    Env,
    /// A key file (normally `DIVE_HOME/master.key`).
    File(PathBuf),
    /// A key file this process has just created because there was none: wrong for a store
    /// that already holds secrets, and then removed again ([`crate::SecretStore::verify_key`]).
    Created(PathBuf),
    /// Handed over by the program itself (tests, generated keys).
    Given,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env => f.write_str(MASTER_KEY_ENV),
            KeySource::File(path) => write!(f, "file {}", path.display()),
            KeySource::Created(path) => write!(f, "file {}, created just now", path.display()),
            KeySource::Given => f.write_str("the calling program"),
        }
    }
}

/// The 32-byte key all secrets are encrypted under. `Debug` shows only where it came from; the
/// bytes are zeroed when it is dropped.
#[derive(Clone)]
pub struct MasterKey {
    bytes: Zeroizing<[u8; 32]>,
    source: KeySource,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> MasterKey {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(bytes.as_mut());
        MasterKey {
            bytes,
            source: KeySource::Given,
        }
    }

    pub fn from_bytes(bytes: [u8; 32], source: KeySource) -> MasterKey {
        MasterKey {
            bytes: Zeroizing::new(bytes),
            source,
        }
    }

    /// Parses standard base64 of exactly 32 bytes; surrounding whitespace is ignored. The error
    /// names `source` and never contains `text`.
    pub fn from_base64(text: &str, source: KeySource) -> Result<MasterKey, SecretError> {
        let malformed = |problem: String| SecretError::MalformedKey {
            origin: source.clone(),
            problem,
        };
        let text = text.trim();
        if text.is_empty() {
            return Err(malformed("it is empty".into()));
        }
        // The decoder's own message quotes the offending character: not repeated here.
        let decoded = Zeroizing::new(
            STANDARD
                .decode(text)
                .map_err(|_| malformed("it is not valid standard base64".into()))?,
        );
        let bytes: [u8; 32] = decoded.as_slice().try_into().map_err(|_| {
            malformed(format!(
                "it decodes to {} bytes instead of 32",
                decoded.len()
            ))
        })?;
        Ok(MasterKey::from_bytes(bytes, source))
    }

    /// The key as standard base64, as it is written to a key file.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.bytes.as_ref()))
    }

    pub fn source(&self) -> &KeySource {
        &self.source
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The key from `env` (the value of `DIVE_MASTER_KEY`) when set and not empty, else
    /// the key file at `file`, which is created (mode 0600, parent directories 0700) with a fresh
    /// key when it does not exist.
    pub fn load_from(env: Option<&str>, file: &Path) -> Result<MasterKey, SecretError> {
        match MasterKey::read(env, file)? {
            Some(key) => Ok(key),
            None => create_key_file(file),
        }
    }

    /// Like [`MasterKey::load_from`], but never creates the file: `None` when there is no key
    /// yet (a dry run must not write one).
    pub fn read(env: Option<&str>, file: &Path) -> Result<Option<MasterKey>, SecretError> {
        if let Some(text) = env.filter(|t| !t.is_empty()) {
            return MasterKey::from_base64(text, KeySource::Env).map(Some);
        }
        read_key_file(file)
    }
}

fn key_file_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SecretError {
    let path = path.to_path_buf();
    move |error| SecretError::KeyFile {
        action,
        path,
        error,
    }
}

/// The key in `path`, or `None` when there is no such file.
fn read_key_file(path: &Path) -> Result<Option<MasterKey>, SecretError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(key_file_error("read", path)(e)),
    };
    let source = KeySource::File(path.to_path_buf());
    let text = std::str::from_utf8(&bytes).map_err(|_| SecretError::MalformedKey {
        origin: source.clone(),
        problem: "it is not UTF-8 text".into(),
    })?;
    let key = MasterKey::from_base64(text, source)?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o777),
            "the master key file is readable by other users; `chmod 600` it"
        );
    }
    Ok(Some(key))
}

/// Writes a fresh key to `path` without ever exposing a partial file: the key goes to a private
/// temporary file that is then hard-linked into place, which fails if another process created
/// the file meanwhile (its key is used then).
fn create_key_file(path: &Path) -> Result<MasterKey, SecretError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(key_file_error("create the directory of", path))?;
    }
    let key = MasterKey::generate();
    let tmp = path.with_extension(format!("key.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp); // left by a crashed process with the same pid
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(key.to_base64().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created a new master key");
            Ok(MasterKey {
                source: KeySource::Created(path.to_path_buf()),
                ..key
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key_file(path)?
            .ok_or_else(|| key_file_error("read", path)(std::io::ErrorKind::NotFound.into())),
        Err(e) => Err(key_file_error("create", path)(e)),
    }
}
