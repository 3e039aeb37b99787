//! The cluster's TCP port: chosen once at init, recorded in `root/port`, reused afterwards so
//! URLs handed out earlier stay valid.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::Error;

/// Candidates come from below Linux's ephemeral range (32768–60999) so that other programs'
/// `bind(0)` listeners and outgoing connections are unlikely to take the port while the cluster
/// is stopped, and from below 20000, where dive's instances get their port blocks
/// (`DIVE_PORT_BASE`, default 20000): a cluster must never sit on a port an instance's
/// PostgreSQL or Keycloak is given.
const RANGE: std::ops::Range<u16> = 15_000..20_000;

/// Reads the recorded port; `Ok(None)` if the file does not exist.
pub(crate) fn read(path: &Path) -> Result<Option<u16>, Error> {
    let content = match std::fs::read_to_string(path) {
        Ok(content) => content,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read the port file", path, e)),
    };
    match content.trim().parse::<u16>() {
        Ok(port) if port != 0 => Ok(Some(port)),
        _ => Err(Error::BadPortFile {
            path: path.to_owned(),
            content,
        }),
    }
}

/// Records `port`, atomically (write then rename), so a reader never sees a half-written file.
pub(crate) fn write(path: &Path, port: u16) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{port}\n"))
        .map_err(|e| Error::io("write the port file", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("write the port file", path, e))
}

/// A port nobody listens on right now. Random rather than sequential so that clusters being
/// initialised at the same time rarely pick the same one.
pub(crate) fn pick(root: &Path) -> Result<u16, Error> {
    let random = RandomState::new();
    let span = u64::from(RANGE.end - RANGE.start);
    for attempt in 0u32..200 {
        let mut hasher = random.build_hasher();
        hasher.write_u32(attempt);
        hasher.write_u32(std::process::id());
        let offset = u16::try_from(hasher.finish() % span).unwrap_or(0);
        let port = RANGE.start + offset;
        if is_free(port) {
            return Ok(port);
        }
    }
    // Crowded range: let the kernel choose.
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|addr| addr.port())
        .map_err(|_| Error::NoFreePort {
            root: root.to_owned(),
        })
}

/// Whether we could listen on 127.0.0.1:`port` (std sets SO_REUSEADDR, like PostgreSQL, so a
/// recently closed connection in TIME_WAIT does not count as busy).
pub(crate) fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub(crate) fn is_accepting(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}
