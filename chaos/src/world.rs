//! The world a chaos run acts on: a state database of its own (reached by dive through the fault
//! proxy), its own DIVE_HOME and port block, the real `dive` binary, and a record of everything
//! dive printed (so that the secret scan sees it all).

use crate::proxy::Toxiproxy;
use crate::{ChaosError, Options};
use dive_pgcluster::{Cluster, StopMode};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The Keycloak image `scripts/setup` builds, used unless `DIVE_KEYCLOAK_IMAGE` says otherwise.
const OFFLINE_KEYCLOAK_IMAGE: &str = "dive-offline/keycloak:26.5.5";

/// The name of the state database's proxy.
pub const STATE_DB_PROXY: &str = "state-db";

/// What a finished dive process left.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code, or None when a signal ended the process.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub what: String,
}

impl Output {
    /// Stdout as one JSON document.
    pub fn json(&self) -> Result<Value, String> {
        serde_json::from_str(&self.stdout).map_err(|e| {
            format!(
                "`{}` printed no JSON ({e}): {}{}",
                self.what, self.stdout, self.stderr
            )
        })
    }

    /// Ok when the exit code is `expected`, else a message with everything dive said.
    pub fn expect_code(&self, expected: i32) -> Result<&Self, String> {
        if self.code == Some(expected) {
            Ok(self)
        } else {
            Err(format!(
                "`{}` exited with {:?}, expected {expected}: {}{}",
                self.what,
                self.code,
                tail(&self.stdout),
                tail(&self.stderr)
            ))
        }
    }
}

/// The last lines of a long text, for messages.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A dive process running in the background. Killed on drop if it still runs.
pub struct Running {
    child: Child,
    started: Instant,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    what: String,
    log: Arc<Mutex<Vec<String>>>,
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` to the dive process.
    pub fn signal(&self, signal: i32) -> Result<(), String> {
        signal_pid(self.pid(), signal)
    }

    /// Waits for the process to exit; kills it and fails after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Result<Output, String> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break None;
                }
                Err(e) => return Err(format!("waiting for `{}`: {e}", self.what)),
            }
        };
        let stdout = self.stdout.take().map(|h| h.join().unwrap_or_default());
        let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default());
        let out = Output {
            code: status.and_then(|s| s.code()),
            stdout: stdout.unwrap_or_default(),
            stderr: stderr.unwrap_or_default(),
            elapsed: self.started.elapsed(),
            what: self.what.clone(),
        };
        if let Ok(mut log) = self.log.lock() {
            log.push(out.stdout.clone());
            log.push(out.stderr.clone());
        }
        match status {
            Some(_) => Ok(out),
            None => Err(format!(
                "`{}` did not finish within {timeout:?} (killed): {}",
                self.what,
                tail(&out.stderr)
            )),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// kill(2), with the error as text.
pub fn signal_pid(pid: i32, signal: i32) -> Result<(), String> {
    // SAFETY: kill(2) on a process (or, negative, a process group) this suite started or that
    // dive started for it; no memory is involved.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(format!(
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Polls `ready` every 100 ms until it gives a value, or fails naming `what` after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = ready() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting until {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `(pid, command line)` of every live process whose command line names a path under `dir`.
pub fn processes_under(dir: &std::path::Path) -> Vec<(i32, String)> {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some((pid, cmdline))
        })
        .collect()
}

/// The size of the state database's file system (a tmpfs: memory is only used as filled).
const STATE_FS_SIZE: &str = "1g";

/// Runs a system tool to completion; its failure says `what` and the tool's own words.
pub fn run_tool(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Mounts a tmpfs of `size` on `dir` (created).
fn mount_tmpfs(dir: &Path, size: &str) -> Result<(), ChaosError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| ChaosError::Setup(format!("{}: {e}", dir.display())))?;
    run_tool(
        Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir),
        &format!(
            "mounting a tmpfs on {} (the chaos suite needs root)",
            dir.display()
        ),
    )
    .map_err(ChaosError::Setup)
}

/// The state database's file system (what a disk-full fault fills).
pub fn state_fs(world: &World) -> PathBuf {
    world.work.path().join("state-fs")
}

/// One chaos run's world. Dropping it stops the state database and the proxy and removes the
/// temporary directories; instances must have been reset before (the runner does).
pub struct World {
    dive: PathBuf,
    cache: Option<PathBuf>,
    pub port_base: u16,
    pub state: Cluster,
    pub db: String,
    /// The state database's URL as dive sees it: through the proxy.
    proxied_url: String,
    pub proxy: Toxiproxy,
    home: tempfile::TempDir,
    work: tempfile::TempDir,
    /// Extra environment for every dive command (a scenario may set a wrong master key).
    vars: Mutex<Vec<(String, String)>>,
    log: Arc<Mutex<Vec<String>>>,
    kept: bool,
}

impl World {
    /// Starts the state database and the proxy in front of it.
    pub fn create(options: &Options) -> Result<World, ChaosError> {
        let work = tempfile::Builder::new()
            .prefix("dive-chaos-")
            .tempdir()
            .map_err(|e| ChaosError::Setup(format!("a temporary directory: {e}")))?;
        // The state database on a file system of its own, so that a scenario can fill it.
        let state_fs = work.path().join("state-fs");
        mount_tmpfs(&state_fs, STATE_FS_SIZE)?;
        let state = Cluster::new(state_fs.join("pg"));
        state
            .ensure_running()
            .map_err(|e| ChaosError::Setup(format!("the state database: {e}")))?;
        let db = "dive_chaos".to_string();
        state
            .create_database(&db)
            .map_err(|e| ChaosError::Setup(format!("database {db}: {e}")))?;
        let port = state
            .port()
            .map_err(|e| ChaosError::Setup(format!("the state database's port: {e}")))?;
        let proxy = Toxiproxy::start(&options.toxiproxy, work.path())?;
        let listen = proxy.create(STATE_DB_PROXY, port)?;
        let home = tempfile::Builder::new()
            .prefix("dive-chaos-home-")
            .tempdir()
            .map_err(|e| ChaosError::Setup(format!("DIVE_HOME: {e}")))?;
        Ok(World {
            dive: options.dive.clone(),
            cache: options.cache.clone(),
            port_base: options.port_base,
            state,
            proxied_url: format!("postgres://postgres@127.0.0.1:{listen}/{db}"),
            db,
            proxy,
            home,
            work,
            vars: Mutex::new(Vec::new()),
            log: Arc::new(Mutex::new(Vec::new())),
            kept: false,
        })
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// A directory for files a scenario keeps aside (a master key moved away).
    pub fn scratch(&self) -> &Path {
        self.work.path()
    }

    /// `dive ARGS` with this world's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.dive);
        cmd.args(args)
            .env("DIVE_DATABASE_URL", &self.proxied_url)
            .env("DIVE_HOME", self.home.path())
            .env("DIVE_PORT_BASE", self.port_base.to_string())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .env_remove("DIVE_LOG_FORMAT")
            .env_remove("DIVE_MASTER_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cache) = &self.cache {
            cmd.env("DIVE_CACHE", cache);
        }
        // Docker scenarios run the image scripts/setup builds (no registry is reachable).
        if std::env::var_os("DIVE_KEYCLOAK_IMAGE").is_none() {
            cmd.env("DIVE_KEYCLOAK_IMAGE", OFFLINE_KEYCLOAK_IMAGE);
        }
        if let Ok(vars) = self.vars.lock() {
            cmd.envs(vars.iter().map(|(k, v)| (k, v)));
        }
        cmd
    }

    /// Sets an environment variable for the following dive commands.
    pub fn set_var(&self, key: &str, value: &str) {
        if let Ok(mut vars) = self.vars.lock() {
            vars.push((key.to_string(), value.to_string()));
        }
    }

    /// Forgets every variable [`World::set_var`] set.
    pub fn clear_vars(&self) {
        if let Ok(mut vars) = self.vars.lock() {
            vars.clear();
        }
    }

    /// Starts `dive ARGS` in the background.
    pub fn spawn(&self, args: &[&str]) -> Result<Running, String> {
        let what = format!("dive {}", args.join(" "));
        let mut child = self
            .command(args)
            .spawn()
            .map_err(|e| format!("starting `{what}`: {e}"))?;
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        Ok(Running {
            child,
            started: Instant::now(),
            stdout,
            stderr,
            what,
            log: self.log.clone(),
        })
    }

    /// Runs `dive ARGS` to completion (at most `timeout`).
    pub fn dive_within(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        self.spawn(args)?.wait(timeout)
    }

    /// Runs a short `dive ARGS` (status, show, list: at most a minute).
    pub fn dive(&self, args: &[&str]) -> Result<Output, String> {
        self.dive_within(args, Duration::from_secs(60))
    }

    /// Runs `dive ARGS --json` and expects exit 0 and one JSON document.
    pub fn dive_json(&self, args: &[&str]) -> Result<Value, String> {
        let mut all = args.to_vec();
        all.push("--json");
        self.dive(&all)?.expect_code(0)?.json()
    }

    /// Everything dive printed in this world so far (reveals excluded: see [`World::reveal`]).
    pub fn printed(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// A secret's current value, read without adding it to what the secret scan reads.
    pub fn reveal(&self, name: &str) -> Result<String, String> {
        let out = self
            .command(&["secrets", "show", name, "--reveal"])
            .output()
            .map_err(|e| format!("dive secrets show {name}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "dive secrets show {name} --reveal: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs SQL on the state database directly (not through the proxy).
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        self.state.psql(&self.db, sql).map_err(|e| e.to_string())
    }

    /// The rows of `select` as JSON objects, read directly.
    pub fn rows(&self, select: &str) -> Result<Vec<Value>, String> {
        let text = self.sql(&format!(
            "SELECT coalesce(json_agg(t), '[]'::json) FROM ({select}) t"
        ))?;
        match serde_json::from_str(&text) {
            Ok(Value::Array(rows)) => Ok(rows),
            _ => Err(format!("not a JSON array: {text}")),
        }
    }

    /// The pid of a service dive started for instance `code` (`keycloak`, `postgres`): the
    /// leader of its process group.
    pub fn service_pid(&self, code: &str, service: &str) -> Result<i32, String> {
        let path = self.home.path().join(format!(
            "instances/{}/services/{service}.json",
            code.to_lowercase()
        ));
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let doc: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        doc["pid"]
            .as_i64()
            .map(|p| p as i32)
            .ok_or_else(|| format!("{}: no pid", path.display()))
    }
}

impl World {
    /// Leaves everything as it is when the world is dropped — state database running, DIVE_HOME
    /// and instances kept — so that a failed scenario can be looked into; returns how to reach it.
    pub fn keep(&mut self) -> String {
        self.kept = true;
        self.home.disable_cleanup(true);
        self.work.disable_cleanup(true);
        format!(
            "DIVE_HOME={} DIVE_DATABASE_URL={} DIVE_PORT_BASE={}",
            self.home.path().display(),
            self.state.url(&self.db).unwrap_or_default(),
            self.port_base
        )
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if !self.kept {
            // Whatever a failed reset left running under this world's DIVE_HOME goes too.
            for (pid, _) in processes_under(self.home.path()) {
                let _ = signal_pid(pid, libc::SIGKILL);
            }
            let _ = self.state.stop(StopMode::Immediate);
            let _ = Command::new("umount").arg(state_fs(self)).status();
        }
    }
}
