//! A private PostgreSQL cluster built from the machine's own binaries, for development, tests and
//! benchmarks of dive's durable store.
//!
//! Everything lives under one root directory:
//!
//! | path              | what                                                           |
//! |-------------------|----------------------------------------------------------------|
//! | `root/data`       | the cluster (also the unix socket directory)                   |
//! | `root/port`       | the TCP port chosen at init, reused afterwards                 |
//! | `root/server.log` | the server's log                                               |
//! | `root/pg_ctl.log` | `pg_ctl start`'s own output, from the last start               |
//! | `root/lock`       | an exclusive `flock` held while initialising, starting, stopping |
//!
//! The server listens on 127.0.0.1 only, with `trust` authentication for the superuser
//! `postgres`: it is reachable from this machine only, so passwords would add nothing.
//! `fsync` and `synchronous_commit` stay on because benchmarks measure durable commits.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: then the server binaries run as the
//! `postgres` system user (`runuser -u postgres --`), the root directory is given to that user and
//! the directories above it are made traversable (o+x only). The server daemonises and keeps
//! running after the calling process exits; [`Cluster::stop`] ends it.
//!
//! The API is synchronous (`std::process`), so it can be called before any async runtime exists;
//! call it from `spawn_blocking` inside one.

mod error;
mod lockfiles;
mod ownership;
mod port;
mod server;
mod sql;
mod tools;

use std::path::{Path, PathBuf};

pub use error::{Error, StartFailure};
pub use tools::{BIN_ENV, find_bin_dir};

const DATA_DIR: &str = "data";
const PORT_FILE: &str = "port";
const SERVER_LOG: &str = "server.log";
const PG_CTL_LOG: &str = "pg_ctl.log";
const LOCK_FILE: &str = "lock";

/// A PostgreSQL cluster rooted at one directory. Cheap to create: nothing happens on disk until
/// [`Cluster::ensure_running`].
#[derive(Clone, Debug)]
pub struct Cluster {
    root: PathBuf,
}

/// How [`Cluster::stop`] shuts the server down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Roll back open transactions, checkpoint, exit (`pg_ctl stop -m fast`).
    Fast,
    /// Exit at once without a checkpoint; the next start runs crash recovery
    /// (`pg_ctl stop -m immediate`): what an outage test wants.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

impl Cluster {
    /// Cluster rooted at `root`: data in `root/data`, chosen port recorded in `root/port`, server
    /// log in `root/server.log`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cluster { root: root.into() }
    }

    /// The directory holding everything of this cluster.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The PostgreSQL data directory, also where the unix socket lives.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join(DATA_DIR)
    }

    /// The server log: the first place to look when the server misbehaves.
    pub fn log_path(&self) -> PathBuf {
        self.root.join(SERVER_LOG)
    }

    /// Initialises the cluster if there is none yet and starts it if it is not running.
    ///
    /// Idempotent, and safe when several threads or processes call it at once: initialisation and
    /// start happen under an exclusive lock on `root/lock`. When the server already runs this only
    /// reads two small files and makes one local TCP connection (well under 20 ms), so callers
    /// may call it before every use.
    ///
    /// A data directory without `PG_VERSION` (an interrupted init) is removed and initialised
    /// again; a `postmaster.pid` left by a dead server does not prevent the start.
    pub fn ensure_running(&self) -> Result<(), Error> {
        if self.is_running() {
            return Ok(());
        }
        let tools = tools::Tools::discover()?;
        let abs = self.prepare_root(&tools)?;
        let _lock = lockfiles::DirLock::acquire(&abs)?;
        // Another caller may have done the work while we waited for the lock.
        if self.is_running() {
            return Ok(());
        }
        self.init_locked(&tools, &abs)?;
        self.start_locked(&tools, &abs)
    }

    /// Starts an initialised cluster (`pg_ctl start -w`); does not initialise. Ok if it already
    /// runs. Prefer [`Cluster::ensure_running`].
    pub fn start(&self) -> Result<(), Error> {
        let data = self.data_dir();
        if !data.join("PG_VERSION").is_file() {
            return Err(Error::NotInitialised { path: data });
        }
        let tools = tools::Tools::discover()?;
        let abs = self.prepare_root(&tools)?;
        let _lock = lockfiles::DirLock::acquire(&abs)?;
        self.start_locked(&tools, &abs)
    }

    /// Stops the server (`pg_ctl stop -w`) and waits until it is gone; Ok if it was not running.
    pub fn stop(&self, mode: StopMode) -> Result<(), Error> {
        if self.postmaster_pid().is_none() {
            return Ok(());
        }
        let tools = tools::Tools::discover()?;
        let abs = std::fs::canonicalize(&self.root)
            .map_err(|e| Error::io("resolve the cluster directory", &self.root, e))?;
        let _lock = lockfiles::DirLock::acquire(&abs)?;
        self.stop_locked(&tools, &abs, mode)
    }

    /// Whether our server is up and accepting TCP connections on the recorded port. Checks that
    /// `postmaster.pid` names a live process on that port, so another program that happens to
    /// listen on the port does not count.
    pub fn is_running(&self) -> bool {
        let Ok(Some(port)) = port::read(&self.root.join(PORT_FILE)) else {
            return false;
        };
        match self.postmaster_info() {
            Some(info) if info.port == Some(port) && lockfiles::pid_alive(info.pid) => {
                port::is_accepting(port)
            }
            _ => false,
        }
    }

    /// The TCP port recorded at initialisation.
    pub fn port(&self) -> Result<u16, Error> {
        port::read(&self.root.join(PORT_FILE))?.ok_or_else(|| Error::NotInitialised {
            path: self.root.clone(),
        })
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE` (the name percent-encoded).
    pub fn url(&self, database: &str) -> Result<String, Error> {
        sql::validate_database_name(database)?;
        Ok(format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.port()?,
            sql::percent_encode(database)
        ))
    }

    /// Creates database `name` unless it exists (also when another caller creates it at the
    /// same moment). The server must be running.
    pub fn create_database(&self, name: &str) -> Result<(), Error> {
        sql::validate_database_name(name)?;
        if self.database_exists(name)? {
            return Ok(());
        }
        let statement = format!("CREATE DATABASE {}", sql::quote_ident(name));
        match self.psql("postgres", &statement) {
            Ok(_) => {
                tracing::info!(database = name, root = %self.root.display(), "created database");
                Ok(())
            }
            // Lost a race with another creator: what we wanted exists.
            Err(_) if self.database_exists(name)? => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Whether database `name` exists. The server must be running.
    pub fn database_exists(&self, name: &str) -> Result<bool, Error> {
        sql::validate_database_name(name)?;
        let query = format!(
            "SELECT 1 FROM pg_database WHERE datname = {}",
            sql::quote_literal(name)
        );
        Ok(self.psql("postgres", &query)? == "1")
    }

    /// Runs `sql` with `psql -XAtq -v ON_ERROR_STOP=1` against `database` over TCP and returns its
    /// output without the final newline: rows one a line, columns separated by `|`.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, Error> {
        let url = self.url(database)?;
        let tools = tools::Tools::client_only()?;
        let mut cmd = tools.client("psql");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(url)
            .arg("-c")
            .arg(sql);
        let output = tools::run(&mut cmd)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        Ok(stdout.strip_suffix('\n').unwrap_or(&stdout).to_owned())
    }
}
