//! Initialising, starting and stopping the server: `initdb` and `pg_ctl`, under the root lock.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::error::StartFailure;
use crate::tools::{self, Tools};
use crate::{
    Cluster, DATA_DIR, Error, PG_CTL_LOG, PORT_FILE, SERVER_LOG, StopMode, ownership, port,
};

/// How long `pg_ctl` may wait for the server to start or stop (crash recovery included).
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// Where `initdb` writes; renamed to `data` only once complete, so `data` is never half-made.
const STAGING_DIR: &str = "data.initdb";

/// Only this machine may connect (local socket and 127.0.0.1), so trust is enough. Replication
/// is allowed the same way so `pg_basebackup` works for experiments.
const PG_HBA: &str = "\
# Written by dive-pgcluster: a private cluster reachable from this machine only.
# TYPE  DATABASE     USER  ADDRESS         METHOD
local   all          all                   trust
host    all          all   127.0.0.1/32    trust
local   replication  all                   trust
host    replication  all   127.0.0.1/32    trust
";

/// The longest unix socket path the kernel takes (`sizeof(sun_path)` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

impl Cluster {
    /// Creates the root directory and, when we are root, lets the `postgres` user reach and own
    /// it. Returns its canonical path, which is what the server binaries are given.
    pub(crate) fn prepare_root(&self, tools: &Tools) -> Result<PathBuf, Error> {
        std::fs::create_dir_all(&self.root)
            .map_err(|e| Error::io("create the cluster directory", &self.root, e))?;
        let abs = std::fs::canonicalize(&self.root)
            .map_err(|e| Error::io("resolve the cluster directory", &self.root, e))?;
        if let Some(user) = tools.run_as {
            ownership::make_ancestors_traversable(&abs)?;
            ownership::chown_one(&abs, user)?;
        }
        Ok(abs)
    }

    /// Runs `initdb` unless `data/PG_VERSION` exists. Call with the lock held.
    pub(crate) fn init_locked(&self, tools: &Tools, abs: &Path) -> Result<(), Error> {
        let data = abs.join(DATA_DIR);
        if data.join("PG_VERSION").is_file() {
            return Ok(());
        }
        if std::fs::symlink_metadata(&data).is_ok() {
            tracing::warn!(data = %data.display(), "data directory has no PG_VERSION (interrupted init?): removing it and initialising again");
            std::fs::remove_dir_all(&data)
                .map_err(|e| Error::io("remove the incomplete data directory", &data, e))?;
        }
        let staging = abs.join(STAGING_DIR);
        if std::fs::symlink_metadata(&staging).is_ok() {
            std::fs::remove_dir_all(&staging)
                .map_err(|e| Error::io("remove the leftover init directory", &staging, e))?;
        }
        let started = Instant::now();
        let mut cmd = tools.server("initdb", abs);
        cmd.arg("-D").arg(&staging).args([
            "--username=postgres",
            "--encoding=UTF8",
            // C collation: byte order, identical on every machine, no locale packages needed.
            "--no-locale",
            "--auth-local=trust",
            "--auth-host=trust",
            "--no-instructions",
        ]);
        tools::run(&mut cmd)?;
        let hba = staging.join("pg_hba.conf");
        // Overwrites in place, so the file keeps its owner (postgres when we are root).
        std::fs::write(&hba, PG_HBA).map_err(|e| Error::io("write", &hba, e))?;
        std::fs::rename(&staging, &data)
            .map_err(|e| Error::io("move the new cluster into place at", &data, e))?;
        let port = port::pick(abs)?;
        port::write(&abs.join(PORT_FILE), port)?;
        tracing::info!(
            data = %data.display(),
            port,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "initialised PostgreSQL cluster"
        );
        Ok(())
    }

    /// Starts the initialised cluster unless it runs. Call with the lock held.
    pub(crate) fn start_locked(&self, tools: &Tools, abs: &Path) -> Result<(), Error> {
        let data = abs.join(DATA_DIR);
        if !data.join("PG_VERSION").is_file() {
            return Err(Error::NotInitialised { path: data });
        }
        let port_path = abs.join(PORT_FILE);
        let mut port = match port::read(&port_path) {
            Ok(Some(port)) => port,
            Ok(None) | Err(Error::BadPortFile { .. }) => {
                let port = port::pick(abs)?;
                tracing::warn!(file = %port_path.display(), port, "no valid port recorded: picked a new one");
                port::write(&port_path, port)?;
                port
            }
            Err(e) => return Err(e),
        };
        self.clear_zombie_lock_files(&data)?;
        for attempt in 1..=2 {
            if self.is_running() {
                return Ok(());
            }
            // Someone else listens on our port while our server is down: move rather than fail,
            // callers get the new port from `port()`/`url()`.
            if self.postmaster_pid().is_none() && !port::is_free(port) {
                let new = port::pick(abs)?;
                tracing::warn!(old = port, new, root = %abs.display(), "the cluster's port is taken by another program: moving the cluster to a new port");
                port::write(&port_path, new)?;
                port = new;
            }
            match self.pg_ctl_start(tools, abs, port) {
                Ok(()) => break,
                // Another program bound the port between our check and the server's bind.
                Err(e)
                    if attempt == 1 && self.postmaster_pid().is_none() && !port::is_free(port) =>
                {
                    tracing::warn!(error = %e, port, "start failed and the port is now taken: retrying on another port");
                }
                Err(e) => return Err(e),
            }
        }
        // `pg_ctl -w` returns once the server reports ready, which is after it opened its sockets.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.is_running() {
            if Instant::now() >= deadline {
                return Err(Error::NotAccepting { data, port });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// `pg_ctl start -w`, daemonised: stdin is closed and output goes to files rather than pipes,
    /// so the server outlives us and never blocks on a reader that went away.
    fn pg_ctl_start(&self, tools: &Tools, abs: &Path, port: u16) -> Result<(), Error> {
        let data = abs.join(DATA_DIR);
        let socket = data.join(format!(".s.PGSQL.{port}"));
        let socket_len = socket.as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            return Err(Error::SocketPathTooLong {
                path: socket,
                len: socket_len,
            });
        }
        let log = abs.join(SERVER_LOG);
        let log_offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let out_path = abs.join(PG_CTL_LOG);
        let out = File::create(&out_path).map_err(|e| Error::io("create", &out_path, e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("open", &out_path, e))?;
        if let Some(user) = tools.run_as {
            // Files we wrote as root (port, lock, pg_ctl.log) and anything else left around.
            ownership::chown_tree(abs, user)?;
        }
        let mut cmd = tools.server("pg_ctl", abs);
        cmd.arg("start")
            .arg("-D")
            .arg(&data)
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS])
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(server_options(&data, port))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let command = tools::display(&cmd);
        tracing::info!(%command, "starting PostgreSQL");
        let started = Instant::now();
        let status = cmd.status().map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
        if status.success() {
            tracing::info!(
                port,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "PostgreSQL started"
            );
            return Ok(());
        }
        let output = std::fs::read_to_string(&out_path).unwrap_or_default();
        let output = output.trim();
        Err(Error::StartFailed(Box::new(StartFailure {
            data,
            command,
            status: status.to_string(),
            output: if output.is_empty() {
                "no output".to_owned()
            } else {
                output.to_owned()
            },
            log_tail: read_tail(&log, log_offset, 4096),
            log,
        })))
    }

    /// `pg_ctl stop -w`. Call with the lock held.
    pub(crate) fn stop_locked(
        &self,
        tools: &Tools,
        abs: &Path,
        mode: StopMode,
    ) -> Result<(), Error> {
        if self.postmaster_pid().is_none() {
            return Ok(());
        }
        let data = abs.join(DATA_DIR);
        let mut cmd = tools.server("pg_ctl", abs);
        cmd.arg("stop").arg("-D").arg(&data).args([
            "-m",
            mode.as_arg(),
            "-w",
            "-t",
            PG_CTL_TIMEOUT_SECS,
        ]);
        match tools::run(&mut cmd) {
            Ok(_) => {
                tracing::info!(data = %data.display(), mode = mode.as_arg(), "PostgreSQL stopped");
                Ok(())
            }
            // It died on its own meanwhile: stopped is what we wanted.
            Err(_) if self.postmaster_pid().is_none() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The server's command-line settings (`pg_ctl -o`, which goes through `sh -c`, hence the
/// quoting). Kept out of postgresql.conf so the port file stays the one record of the port.
fn server_options(data: &Path, port: u16) -> String {
    // unix_socket_directories is a list: double-quote the entry if commas/spaces/quotes in it
    // would otherwise split or change it.
    let data = data.to_string_lossy();
    let socket_dir = if data.contains(|c: char| c == ',' || c == '"' || c.is_whitespace()) {
        format!("\"{}\"", data.replace('"', "\"\""))
    } else {
        data.into_owned()
    };
    format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 \
         -c shared_buffers=128MB -c fsync=on -c synchronous_commit=on",
        shell_quote(&socket_dir)
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What was appended to `path` after `offset`, at most the last `max` bytes of it.
fn read_tail(path: &Path, offset: u64, max: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        // Shorter than before: truncated or replaced, show its end.
        let from = if len < offset { 0 } else { offset };
        file.seek(SeekFrom::Start(from.max(len.saturating_sub(max))))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).trim().to_owned())
    };
    match read() {
        Ok(text) if text.is_empty() => "(nothing new)".to_owned(),
        Ok(text) => text,
        Err(e) => format!("(could not read it: {e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_quote_the_socket_dir() {
        let opts = server_options(Path::new("/tmp/it's, here/data"), 5432);
        assert!(opts.starts_with(r#"-p 5432 -k '"/tmp/it'\''s, here/data"' -c listen_addresses"#));
        let plain = server_options(Path::new("/tmp/x/data"), 5432);
        assert!(plain.starts_with("-p 5432 -k '/tmp/x/data' -c"));
        assert!(opts.contains("fsync=on") && opts.contains("synchronous_commit=on"));
    }
}
