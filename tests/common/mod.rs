//! Harness for the end-to-end tests: they run the real `dive` binary against a real PostgreSQL.
//!
//! - One cluster per test binary ([`shared_cluster`]), created fresh on first use under
//!   `CARGO_TARGET_TMPDIR/<binary>-pg` (a server left there by an earlier run is stopped and the
//!   directory deleted first). It is left running when the binary ends; the next run replaces it.
//! - Every test gets its own database and its own `DIVE_HOME` and work directory ([`TestEnv`]).
//! - Tests that stop and start PostgreSQL use a [`PrivateCluster`], stopped when dropped.

#![allow(dead_code)]

pub mod federation;

use dive_pgcluster::{Cluster, StopMode};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The binary under test.
pub const DIVE: &str = env!("CARGO_BIN_EXE_dive");
/// The name of the test binary this module is compiled into (`cli_runs`, ...).
const BINARY: &str = env!("CARGO_CRATE_NAME");
/// No single dive invocation in these tests should take longer; a hang fails the test instead
/// of blocking the suite.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A new cluster in `dir`, started: a server an earlier run left there is stopped, and the
/// directory is removed first.
pub fn fresh_cluster(dir: PathBuf) -> Cluster {
    let cluster = Cluster::new(&dir);
    if dir.exists() {
        if let Err(e) = cluster.stop(StopMode::Immediate) {
            panic!("stopping the leftover server in {}: {e}", dir.display());
        }
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("removing {}: {e}", dir.display()));
    }
    if let Err(e) = cluster.ensure_running() {
        panic!("starting PostgreSQL in {}: {e}", dir.display());
    }
    cluster
}

/// The cluster every test of this binary shares (each with its own database).
pub fn shared_cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        fresh_cluster(Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{BINARY}-pg")))
    })
}

/// A cluster of one test's own, for tests that stop and start the server. Stopped on drop.
pub struct PrivateCluster {
    pub cluster: Cluster,
}

impl PrivateCluster {
    pub fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{BINARY}-{name}-pg"));
        PrivateCluster {
            cluster: fresh_cluster(dir),
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.stop(StopMode::Immediate) {
            eprintln!(
                "warning: stopping the private cluster {}: {e}",
                self.cluster.root().display()
            );
        }
    }
}

/// Resets instances when dropped — also when an assertion failed — last listed first (spokes
/// before their hub): `(role, code)` with role `hub` or `spoke`.
pub struct Reset<'a>(pub &'a TestEnv, pub Vec<(&'static str, &'static str)>);

impl Drop for Reset<'_> {
    fn drop(&mut self) {
        // A reset removes the instances' logs: a failed test shows their ends first.
        if std::thread::panicking() {
            self.0.print_instance_logs();
        }
        for (role, code) in self.1.iter().rev() {
            let args = match *role {
                "spoke" => vec!["spoke", "reset", code, "--yes"],
                _ => vec!["hub", "reset", "--code", code, "--yes"],
            };
            let _ = self.0.spawn(&args).wait(Duration::from_secs(180));
        }
    }
}

/// What a finished dive process left.
#[derive(Debug)]
pub struct Output {
    /// Exit code, or None when a signal ended the process.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// The command line, for messages.
    pub what: String,
}

impl Output {
    /// Panics (showing everything) unless the exit code is `expected`.
    #[track_caller]
    pub fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(expected),
            "`{}` exited with {:?}, expected {expected}\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Stdout parsed as one JSON document.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout of `{}` is not one JSON document ({e}):\n{}\n--- stderr\n{}",
                self.what, self.stdout, self.stderr
            )
        })
    }

    /// The `id` of the run printed with `--json`.
    #[track_caller]
    pub fn run_id(&self) -> String {
        let json = self.json();
        json["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no run id in {json:#}"))
            .to_string()
    }
}

/// A dive process started in the background (for kill, cancel and lock tests). Killed on drop
/// if it still runs.
pub struct Running {
    child: Child,
    started: Instant,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    what: String,
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

    /// Whether the process has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits for the process to exit; kills it and panics after `timeout`.
    #[track_caller]
    pub fn wait(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default());
                    panic!(
                        "`{}` did not exit within {timeout:?}; killed it\n--- stderr\n{}",
                        self.what,
                        stderr.unwrap_or_default()
                    );
                }
                Err(e) => panic!("waiting for `{}`: {e}", self.what),
            }
        };
        let elapsed = self.started.elapsed();
        Output {
            code: status.code(),
            stdout: self
                .stdout
                .take()
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default(),
            stderr: self
                .stderr
                .take()
                .map(|h| h.join().unwrap_or_default())
                .unwrap_or_default(),
            elapsed,
            what: self.what.clone(),
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

/// Polls `ready` every 50 ms until it is true; panics naming `what` after `timeout`.
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One test's world: its own database on a cluster, its own DIVE_HOME and work directory.
pub struct TestEnv {
    pub cluster: Cluster,
    pub db: String,
    pub url: String,
    pub home: TempDir,
    pub dir: TempDir,
    /// Extra environment for every dive command of this test.
    pub vars: Vec<(String, String)>,
}

impl TestEnv {
    /// Prints the last lines of every service log of every instance in this test's DIVE_HOME
    /// (`instances/<code>/logs/<service>.log`) to stderr, which cargo shows for a failed test.
    pub fn print_instance_logs(&self) {
        const LINES: usize = 60;
        let Ok(instances) = std::fs::read_dir(self.home.path().join("instances")) else {
            return;
        };
        for instance in instances.flatten() {
            let Ok(logs) = std::fs::read_dir(instance.path().join("logs")) else {
                continue;
            };
            for log in logs.flatten() {
                let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- last {LINES} lines of {} ---\n{}",
                    log.path().display(),
                    lines[lines.len().saturating_sub(LINES)..].join("\n")
                );
            }
        }
    }

    /// A new database on the binary's shared cluster.
    pub fn new() -> Self {
        Self::on(shared_cluster())
    }

    /// A new database on `cluster`.
    pub fn on(cluster: &Cluster) -> Self {
        let db = format!("t_{}", uuid::Uuid::now_v7().simple());
        cluster
            .create_database(&db)
            .unwrap_or_else(|e| panic!("creating database {db}: {e}"));
        let url = cluster
            .url(&db)
            .unwrap_or_else(|e| panic!("URL of {db}: {e}"));
        TestEnv {
            cluster: cluster.clone(),
            db,
            url,
            home: tempfile::tempdir().expect("DIVE_HOME temp dir"),
            dir: tempfile::tempdir().expect("work temp dir"),
            vars: Vec::new(),
        }
    }

    /// `dive ARGS` with this test's environment; stdin is null, stdout and stderr piped.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(DIVE);
        cmd.args(args)
            .env("DIVE_DATABASE_URL", &self.url)
            .env("DIVE_HOME", self.home.path())
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG")
            .env_remove("DIVE_PLAIN")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.envs(self.vars.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Sets an environment variable for this test's dive commands.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.vars.push((key.to_string(), value.into()));
        self
    }

    /// Gives this test its own block of ports for instances, so parallel deploys never collide.
    pub fn own_ports(&mut self) -> &mut Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let slot = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Below Linux's ephemeral range (32768+), so no outgoing connection holds one of them,
        // and above the test clusters' ports (dive-pgcluster picks 15000-19999).
        let base = 21000 + (std::process::id() % 20) * 500 + (slot % 5) * 100;
        self.set("DIVE_PORT_BASE", base.to_string())
    }

    /// Starts `dive ARGS` in the background.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let what = format!("dive {}", args.join(" "));
        let mut child = self
            .command(args)
            .spawn()
            .unwrap_or_else(|e| panic!("starting `{what}`: {e}"));
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        Running {
            child,
            started: Instant::now(),
            stdout,
            stderr,
            what,
        }
    }

    /// Runs `dive ARGS` to completion.
    #[track_caller]
    pub fn dive(&self, args: &[&str]) -> Output {
        self.spawn(args).wait(COMMAND_TIMEOUT)
    }

    /// A path in this test's work directory.
    /// Every secret value in this environment's store (latest versions), for checks that none
    /// leaks into a process environment, a container's configuration or an output.
    pub fn secret_values(&self) -> Vec<String> {
        let out = self.dive(&["secrets", "list", "--json"]);
        out.assert_code(0);
        let names: Vec<String> = out
            .json()
            .as_array()
            .expect("a list")
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect();
        names
            .iter()
            .map(|name| {
                let out = self.dive(&["secrets", "show", name, "--reveal"]);
                out.assert_code(0);
                out.stdout.trim().to_string()
            })
            .filter(|v| v.len() >= 8)
            .collect()
    }

    /// The dive CA of this environment (`dive ca show`): the only CA a test's own client of
    /// the instances' Keycloaks trusts.
    pub fn trust(&self) -> dive_tls::Trust {
        let out = self.dive(&["ca", "show"]);
        out.assert_code(0);
        dive_tls::Trust::from_pem(&out.stdout).expect("dive ca show prints a PEM certificate")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The work directory as text, for commands in workflow files.
    pub fn dir_str(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// Writes a workflow file into the work directory; `@DIR@` in `yaml` becomes the work
    /// directory's path. Returns the file's path as text, ready to be an argument.
    pub fn workflow(&self, file: &str, yaml: &str) -> String {
        let path = self.path(file);
        std::fs::write(&path, yaml.replace("@DIR@", &self.dir_str()))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path.display().to_string()
    }

    /// Lines of a file in the work directory (none if it does not exist).
    pub fn lines(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(file))
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// How many lines a counter file in the work directory has (each execution appends one).
    pub fn count(&self, file: &str) -> usize {
        self.lines(file).len()
    }

    /// Creates an empty file in the work directory.
    pub fn touch(&self, file: &str) {
        std::fs::write(self.path(file), "").expect("touch");
    }

    /// Runs SQL on this test's database; Err when psql fails (e.g. a table does not exist yet).
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.cluster.psql(&self.db, sql).map_err(|e| e.to_string())
    }

    #[track_caller]
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("query `{sql}` failed: {e}"))
    }

    /// The rows of `select` as a JSON array of objects.
    #[track_caller]
    pub fn query_json(&self, select: &str) -> Value {
        let text = self.psql(&format!(
            "SELECT coalesce(json_agg(t), '[]'::json) FROM ({select}) t"
        ));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// `SELECT count(*) FROM runs`, or None when the table does not exist.
    pub fn runs_count(&self) -> Option<i64> {
        self.try_psql("SELECT count(*) FROM runs")
            .ok()
            .map(|n| n.trim().parse().expect("a count"))
    }

    /// `dive runs show ID --json`.
    #[track_caller]
    pub fn show(&self, run_id: &str) -> Value {
        self.dive(&["runs", "show", run_id, "--json"])
            .assert_code(0)
            .json()
    }

    /// `dive runs list --json`.
    #[track_caller]
    pub fn list(&self) -> Vec<Value> {
        match self.dive(&["runs", "list", "--json"]).assert_code(0).json() {
            Value::Array(runs) => runs,
            other => panic!("`runs list --json` is not an array: {other:#}"),
        }
    }

    /// Waits until the state database shows a running run of `workflow`; returns its id.
    #[track_caller]
    pub fn wait_for_run(&self, workflow: &str) -> String {
        self.wait_for_run_in(workflow, "running")
    }

    /// Waits until the state database shows a run of `workflow` in `state`; returns its id.
    #[track_caller]
    pub fn wait_for_run_in(&self, workflow: &str, state: &str) -> String {
        let mut id = String::new();
        wait_until(
            &format!("a run of `{workflow}` is {state}"),
            Duration::from_secs(20),
            || {
                id = self
                    .try_psql(&format!(
                        "SELECT id FROM runs WHERE workflow = '{workflow}' AND state = '{state}'"
                    ))
                    .unwrap_or_default();
                !id.is_empty()
            },
        );
        id
    }

    /// Waits until phase `phase` of run `run_id` is in `state` in the state database.
    #[track_caller]
    pub fn wait_for_phase(&self, run_id: &str, phase: &str, state: &str) {
        wait_until(
            &format!("phase `{phase}` of run {run_id} is {state}"),
            Duration::from_secs(20),
            || {
                self.try_psql(&format!(
                    "SELECT state FROM phases WHERE run_id = '{run_id}' AND phase_id = '{phase}'"
                ))
                .is_ok_and(|s| s == state)
            },
        );
    }
}

/// The phase `id` of a run document (`--json` / `runs show --json`).
#[track_caller]
pub fn phase<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["phases"]
        .as_array()
        .and_then(|phases| phases.iter().find(|p| p["id"] == id))
        .unwrap_or_else(|| panic!("no phase `{id}` in {run:#}"))
}

/// `(attempt, state)` pairs of a phase's history.
#[track_caller]
pub fn history(phase: &Value) -> Vec<(u64, String)> {
    phase["history"]
        .as_array()
        .unwrap_or_else(|| panic!("no history in {phase:#}"))
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64().expect("attempt number"),
                a["state"].as_str().expect("attempt state").to_string(),
            )
        })
        .collect()
}

/// A phase's state as text.
#[track_caller]
pub fn state_of(run: &Value, id: &str) -> String {
    phase(run, id)["state"]
        .as_str()
        .unwrap_or_else(|| panic!("phase `{id}` has no state"))
        .to_string()
}

/// A timestamp of a run document (RFC 3339) as a time, for ordering checks.
#[track_caller]
pub fn ts(value: &Value) -> chrono::DateTime<chrono::Utc> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("timestamp `{text}`: {e}"))
        .to_utc()
}

/// Processes of process group `pgid` that are still alive (zombies waiting to be reaped do not
/// count: they have stopped running).
pub fn live_in_group(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
            let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
            let state = fields.next()?;
            let pgrp: i32 = fields.nth(1)?.parse().ok()?;
            (pgrp == pgid && state != "Z" && state != "X").then_some(pid)
        })
        .collect()
}

/// The pid a phase command wrote (`echo $$ > FILE`): its process group, since exec phases run
/// their command in a group of its own.
#[track_caller]
pub fn read_pgid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Kills process group `pgid` (what a phase command left behind when dive was killed).
pub fn kill_group(pgid: i32) {
    // SAFETY: kill(2) on a process group a phase created; no memory is involved.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

/// Live processes whose command line names a path under `dir`.
pub fn processes_under(dir: &std::path::Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some(cmdline)
        })
        .collect()
}
