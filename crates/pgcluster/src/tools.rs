//! Finding the PostgreSQL binaries and running them, as the `postgres` user when we are root.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::Error;
use crate::ownership::{self, PgUser};

/// Where Debian/Ubuntu put the server binaries of the version dive is developed against.
const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Where Debian/Ubuntu put every installed major version, one directory per version.
const VERSIONS_DIR: &str = "/usr/lib/postgresql";
/// Environment variable overriding the binary directory.
pub const BIN_ENV: &str = "DIVE_PG_BIN";

/// The PostgreSQL bin directory to use: `$DIVE_PG_BIN` if set (an error if it has no `pg_ctl`,
/// because silently using another version would be a surprise), else
/// `/usr/lib/postgresql/15/bin`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os(BIN_ENV) {
        let dir = PathBuf::from(dir);
        return if has_server_binaries(&dir) {
            Ok(dir)
        } else {
            Err(Error::BinariesNotFound {
                tried: format!("{BIN_ENV}={} has no initdb and pg_ctl", dir.display()),
            })
        };
    }
    let default = PathBuf::from(DEFAULT_BIN);
    if has_server_binaries(&default) {
        return Ok(default);
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(VERSIONS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let key = version_key(name.to_str()?)?;
            Some((key, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions
        .into_iter()
        .map(|(_, bin)| bin)
        .find(|bin| has_server_binaries(bin))
        .ok_or_else(|| Error::BinariesNotFound {
            tried: format!(
                "{DEFAULT_BIN}, {VERSIONS_DIR}/*/bin (set {BIN_ENV} to the bin directory)"
            ),
        })
}

/// "15" → [15], "9.6" → [9, 6]; anything else is not a version directory.
fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn has_server_binaries(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}

/// The binaries plus who must run the server ones.
pub(crate) struct Tools {
    bin: PathBuf,
    /// `Some` when we are root: the server refuses to run as root, so it runs as `postgres`.
    pub(crate) run_as: Option<PgUser>,
}

impl Tools {
    pub(crate) fn discover() -> Result<Self, Error> {
        let bin = find_bin_dir()?;
        let run_as = if ownership::is_root() {
            Some(ownership::postgres_user()?.ok_or(Error::NoPostgresUser)?)
        } else {
            None
        };
        Ok(Tools { bin, run_as })
    }

    /// For client programs only: no need for the `postgres` user.
    pub(crate) fn client_only() -> Result<Self, Error> {
        Ok(Tools {
            bin: find_bin_dir()?,
            run_as: None,
        })
    }

    /// `initdb`, `pg_ctl`: refuse to run as root, so go through `runuser -u postgres --` when we
    /// are root. `cwd` must be a directory that user can enter.
    pub(crate) fn server(&self, program: &str, cwd: &Path) -> Command {
        let exe = self.bin.join(program);
        let mut cmd = match self.run_as {
            Some(_) => {
                let mut cmd = Command::new(runuser());
                cmd.args(["-u", ownership::POSTGRES_USER, "--"]).arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        cmd.current_dir(cwd);
        clean_env(&mut cmd);
        cmd
    }

    /// Client programs (`psql`) run as whoever we are: they only talk to the server over TCP.
    pub(crate) fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        clean_env(&mut cmd);
        // Never wait for a password prompt or a dead host.
        cmd.arg("--no-password").env("PGCONNECT_TIMEOUT", "10");
        cmd
    }
}

/// The user's `PG*` variables (PGDATA, PGPORT, PGSSLMODE, PGSERVICE, ...) would change what the
/// tools connect to or how; the cluster is fully described by our arguments.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(key);
        }
    }
}

/// `runuser` lives in /usr/sbin or /sbin, which is not always on PATH in CI.
fn runuser() -> PathBuf {
    [
        "/usr/sbin/runuser",
        "/sbin/runuser",
        "/usr/bin/runuser",
        "/bin/runuser",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .unwrap_or_else(|| PathBuf::from("runuser"))
}

/// The command line as a person would type it, for error messages and logs.
pub(crate) fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with stdin closed, capturing its output; a non-zero exit is an error carrying it.
pub(crate) fn run(cmd: &mut Command) -> Result<Output, Error> {
    let command = display(cmd);
    tracing::debug!(%command, "running");
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(Error::CommandFailed {
            command,
            status: output.status.to_string(),
            output: combined(&output),
        })
    }
}

/// stderr then stdout, trimmed: the tools write their errors to stderr.
pub(crate) fn combined(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let parts: Vec<&str> = [stderr.trim(), stdout.trim()]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    if parts.is_empty() {
        "no output".to_owned()
    } else {
        parts.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::version_key;

    #[test]
    fn versions_sort_numerically() {
        let mut keys: Vec<_> = ["9.6", "15", "10", "x"]
            .iter()
            .filter_map(|n| version_key(n))
            .collect();
        keys.sort();
        assert_eq!(keys, vec![vec![9, 6], vec![10], vec![15]]);
    }
}
