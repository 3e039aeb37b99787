//! The one error type of this crate. Every message names the path or the command involved and what
//! went wrong, because the caller usually just prints it and a person has to act on it.

use std::io;
use std::path::PathBuf;

/// What went wrong while managing the cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable PostgreSQL installation; `tried` lists where we looked.
    #[error("no PostgreSQL server binaries (initdb, pg_ctl) found: {tried}")]
    BinariesNotFound { tried: String },

    /// We run as root but there is no `postgres` system user to run the server as.
    #[error(
        "running as root, but the system user `postgres` does not exist: PostgreSQL refuses to run as root, \
         so it must run as `postgres` (install the postgresql package or create the user)"
    )]
    NoPostgresUser,

    /// A file-system operation failed.
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A command could not be started at all.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },

    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {output}")]
    CommandFailed {
        command: String,
        status: String,
        output: String,
    },

    /// `pg_ctl start` failed; the server log says why.
    #[error("{0}")]
    StartFailed(Box<StartFailure>),

    /// `pg_ctl` reported success but nothing answers on the recorded port.
    #[error(
        "PostgreSQL in {data} reported started, but nothing accepts connections on 127.0.0.1:{port}"
    )]
    NotAccepting { data: PathBuf, port: u16 },

    /// A killed server's processes still hold its shared memory, so starting another is unsafe.
    #[error(
        "the previous server of {data} was killed, but {attached} of its processes are still attached \
         to its shared memory (SysV segment {shmid}): stop them (they run as the server's user) and retry"
    )]
    OrphanedServerProcesses {
        data: PathBuf,
        shmid: i32,
        attached: u64,
    },

    /// The cluster has not been initialised (call `ensure_running`).
    #[error("no PostgreSQL cluster at {path}: it has not been initialised (call ensure_running)")]
    NotInitialised { path: PathBuf },

    /// The port file does not hold a port number.
    #[error("port file {path} does not hold a TCP port number: {content:?}")]
    BadPortFile { path: PathBuf, content: String },

    /// Could not find a free TCP port on 127.0.0.1.
    #[error("no free TCP port on 127.0.0.1 for the PostgreSQL cluster at {root}")]
    NoFreePort { root: PathBuf },

    /// The unix socket would not fit in `sockaddr_un.sun_path` (107 bytes).
    #[error(
        "the unix socket path {path} is {len} bytes, over the 107 the system allows: \
         put the cluster root in a shorter directory"
    )]
    SocketPathTooLong { path: PathBuf, len: usize },

    /// The database name cannot be a PostgreSQL database name.
    #[error("invalid database name {name:?}: {reason}")]
    InvalidDatabaseName { name: String, reason: &'static str },
}

/// Details of a failed `pg_ctl start` (boxed: they would make every `Result` large).
#[derive(Debug)]
pub struct StartFailure {
    pub data: PathBuf,
    pub command: String,
    pub status: String,
    /// What `pg_ctl` printed.
    pub output: String,
    pub log: PathBuf,
    /// What the server appended to its log during this attempt (its last 4 KiB).
    pub log_tail: String,
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "could not start PostgreSQL in {}: `{}` failed ({}): {}\n--- new lines of {} ---\n{}",
            self.data.display(),
            self.command,
            self.status,
            self.output,
            self.log.display(),
            self.log_tail
        )
    }
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
