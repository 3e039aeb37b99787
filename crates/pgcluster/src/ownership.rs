//! Root handling. PostgreSQL refuses to run as root, and CI runs as root: the server then runs as
//! the `postgres` system user, which must own the cluster directory and be able to reach it.

use std::ffi::CStr;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::Error;

/// The system user the server runs as when we are root (Debian's packages create it).
pub(crate) const POSTGRES_USER: &str = "postgres";
const POSTGRES_USER_C: &CStr = c"postgres";

#[derive(Clone, Copy, Debug)]
pub(crate) struct PgUser {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Looks up `postgres` in the user database; `None` if there is no such user.
pub(crate) fn postgres_user() -> Result<Option<PgUser>, Error> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: passwd is plain data; getpwnam_r fills it with pointers into `buf`, which we
        // do not read beyond the numeric ids.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwnam_r(
                POSTGRES_USER_C.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(Error::io(
                "look up the user",
                POSTGRES_USER,
                io::Error::from_raw_os_error(rc),
            ));
        }
        return Ok((!result.is_null()).then_some(PgUser {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        }));
    }
}

/// Gives `path` to `user` unless it already belongs to them (symlinks themselves, not targets).
pub(crate) fn chown_one(path: &Path, user: PgUser) -> Result<(), Error> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        // Removed under us (a server file that came and went): nothing to own.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("inspect", path, e)),
    };
    if meta.uid() == user.uid && meta.gid() == user.gid {
        return Ok(());
    }
    match std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::io("change the owner (to postgres) of", path, e))
        }
        _ => Ok(()),
    }
}

/// `chown -R postgres: path`, touching only entries that are not already owned: cheap on the
/// second call, and it fixes files we (root) wrote into the cluster directory.
pub(crate) fn chown_tree(path: &Path, user: PgUser) -> Result<(), Error> {
    chown_one(path, user)?;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("inspect", path, e)),
    };
    if !meta.is_dir() {
        return Ok(());
    }
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list", path, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", path, e))?;
        chown_tree(&entry.path(), user)?;
    }
    Ok(())
}

/// The `postgres` user must traverse every directory above the cluster (a `mktemp -d` directory
/// is 0700). Adds o+x where it is missing and nothing else, so we widen access as little as
/// possible; each change is logged because it alters a directory we do not own.
pub(crate) fn make_ancestors_traversable(root: &Path) -> Result<(), Error> {
    for dir in root.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(|e| Error::io("inspect", dir, e))?;
        let mode = meta.permissions().mode();
        if mode & 0o001 != 0 {
            continue;
        }
        let new_mode = (mode | 0o001) & 0o7777;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(new_mode))
            .map_err(|e| Error::io("add o+x (for the postgres user) to", dir, e))?;
        tracing::info!(
            dir = %dir.display(),
            old_mode = format!("{:o}", mode & 0o7777),
            new_mode = format!("{new_mode:o}"),
            "added o+x so the postgres user can reach the cluster directory"
        );
    }
    Ok(())
}
