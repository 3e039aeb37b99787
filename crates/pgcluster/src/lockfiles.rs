//! Lock files: ours (`root/lock`, serialising init/start/stop) and the server's
//! (`postmaster.pid`, `.s.PGSQL.<port>.lock`), which tell whether a server runs.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Cluster, Error, LOCK_FILE};

/// An exclusive `flock` on `root/lock`, released on drop. Serialises init, start and stop
/// between threads and processes (each acquisition opens the file anew, so threads of one
/// process exclude each other too).
pub(crate) struct DirLock(File);

impl DirLock {
    pub(crate) fn acquire(root: &Path) -> Result<Self, Error> {
        let path = root.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open the lock file", &path, e))?;
        fs4::fs_std::FileExt::lock_exclusive(&file).map_err(|e| Error::io("lock", &path, e))?;
        Ok(DirLock(file))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing would release it too; unlocking explicitly does not depend on no other copy
        // of the descriptor existing.
        let _ = fs4::fs_std::FileExt::unlock(&self.0);
    }
}

/// What `postmaster.pid` says: line 1 is the PID, line 4 the port.
pub(crate) struct PostmasterInfo {
    pub(crate) pid: i32,
    pub(crate) port: Option<u16>,
}

/// Whether `pid` is a live process (a zombie counts as dead: it will never serve again).
pub(crate) fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

/// Whether `/proc` shows `pid` as a zombie (state `Z`).
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the parenthesised command name, which may itself hold ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            == Some("Z")
    })
}

/// The PID on the first line of a PostgreSQL lock file (negative for a standalone backend).
fn lock_file_pid(text: &str) -> Option<i32> {
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    Some(pid.abs()).filter(|&pid| pid > 0)
}

fn remove_stale(path: &Path) -> Result<(), Error> {
    tracing::warn!(file = %path.display(), "removing a lock file of a killed server (a zombie nobody reaps)");
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::io("remove the stale lock file", path, e))
        }
        _ => Ok(()),
    }
}

/// How many processes are attached to SysV shared memory segment `shmid`; `None` if it is gone.
fn shm_attached(shmid: i32) -> Option<u64> {
    // SAFETY: shmid_ds is plain data that IPC_STAT fills in.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a shmid_ds; a bad id just fails.
    if unsafe { libc::shmctl(shmid, libc::IPC_STAT, &mut ds) } != 0 {
        return None;
    }
    Some(ds.shm_nattch as u64)
}

impl Cluster {
    pub(crate) fn postmaster_info(&self) -> Option<PostmasterInfo> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let mut lines = text.lines();
        let pid = lines.next()?.trim().parse().ok()?;
        let port = lines.nth(2).and_then(|line| line.trim().parse().ok());
        Some(PostmasterInfo { pid, port })
    }

    /// The PID of a live postmaster for our data directory, if any.
    pub fn postmaster_pid(&self) -> Option<i32> {
        self.postmaster_info()
            .map(|info| info.pid)
            .filter(|&pid| pid_alive(pid))
    }

    /// A server that was killed leaves `postmaster.pid` and `.s.PGSQL.<port>.lock` behind.
    /// PostgreSQL ignores them when their PID is gone, but counts a zombie as alive
    /// (`kill(pid, 0)` succeeds) and refuses to start; where PID 1 does not reap orphans
    /// (containers without an init, this VM) a killed postmaster stays a zombie for good. So for a
    /// zombie we remove them ourselves — after the check PostgreSQL would have made: no process of
    /// the old server may still be attached to its shared memory (orphaned backends exit soon after
    /// their postmaster dies).
    pub(crate) fn clear_zombie_lock_files(&self, data: &Path) -> Result<(), Error> {
        let pid_file = data.join("postmaster.pid");
        if let Ok(text) = std::fs::read_to_string(&pid_file)
            && lock_file_pid(&text).is_some_and(is_zombie)
        {
            // Line 7: the SysV interlock segment's key and id.
            let shmid = text
                .lines()
                .nth(6)
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|id| id.parse::<i32>().ok());
            if let Some(shmid) = shmid {
                let deadline = Instant::now() + Duration::from_secs(10);
                while let Some(attached) = shm_attached(shmid).filter(|&n| n > 0) {
                    if Instant::now() >= deadline {
                        return Err(Error::OrphanedServerProcesses {
                            data: data.to_owned(),
                            shmid,
                            attached,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            remove_stale(&pid_file)?;
        }
        // Socket lock files live in the socket directory, which is the data directory.
        let entries = std::fs::read_dir(data).map_err(|e| Error::io("list", data, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".s.PGSQL.")
                && name.ends_with(".lock")
                && std::fs::read_to_string(entry.path())
                    .is_ok_and(|text| lock_file_pid(&text).is_some_and(is_zombie))
            {
                remove_stale(&entry.path())?;
            }
        }
        Ok(())
    }
}
