//! The local runtime: services are daemonised OS processes on 127.0.0.1 that outlive the CLI.
//!
//! Layout under `DIVE_HOME/instances/<code>/`: `services/<name>.json` (pid, the process start
//! time from /proc so a reused pid is never taken for ours, and the spec digest), `logs/<name>.log`,
//! `data/<volume>/`. Stop is SIGTERM to the process group, SIGKILL after a grace period.

use crate::health::{http_check, tcp_ok, wait_ready};
use crate::keycloak_dist::{KeycloakDist, START_OPTIONS};
use crate::templates::pg_isready;
use crate::{
    Builtin, Ensured, Health, InitSpec, Resource, ResourceKind, Runtime, RuntimeConfig,
    RuntimeEntry, RuntimeError, RuntimeKind, ServiceSpec, ServiceState, ServiceStatus, check_name,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

/// The local runtime in [`crate::RUNTIMES`]: every service on 127.0.0.1, reached on its host port.
pub const ENTRY: RuntimeEntry = RuntimeEntry {
    name: "local",
    connect: |config| {
        Box::pin(
            async move { Ok(Arc::new(LocalRuntime::from_config(&config)) as Arc<dyn Runtime>) },
        )
    },
    peer_addr: |_, _, port| ("127.0.0.1".into(), port.host),
    sibling_addr: |_, _, port| ("127.0.0.1".into(), port.host),
};

const STOP_GRACE: Duration = Duration::from_secs(15);

/// What we remember about a service we started.
#[derive(Debug, Serialize, Deserialize)]
struct PidFile {
    pid: i32,
    /// Field 22 of /proc/<pid>/stat when we started it.
    start_time: u64,
    digest: String,
    started_at: chrono::DateTime<chrono::Utc>,
}

pub struct LocalRuntime {
    home: PathBuf,
    keycloak: KeycloakDist,
    /// The dive CA, for HTTPS health checks.
    trust: Option<dive_tls::Trust>,
}

impl crate::sealed::Sealed for LocalRuntime {}

/// Start time (clock ticks since boot) of a live, non-zombie process.
fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// uid/gid of a system user.
fn user_ids(name: &str) -> Result<(u32, u32), RuntimeError> {
    let c = CString::new(name).map_err(|_| RuntimeError::Invalid(format!("bad user `{name}`")))?;
    // SAFETY: getpwnam returns a pointer into static storage or null; we copy the ids at once.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(RuntimeError::Invalid(format!(
            "user `{name}` does not exist (needed to run a service as non-root)"
        )));
    }
    // SAFETY: checked non-null above.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn chown_tree(path: &Path, ids: (u32, u32)) -> Result<(), RuntimeError> {
    std::os::unix::fs::chown(path, Some(ids.0), Some(ids.1))
        .map_err(|e| RuntimeError::io(format!("chown {}", path.display()), e))?;
    if path.is_dir() {
        for entry in
            std::fs::read_dir(path).map_err(|e| RuntimeError::io(path.display().to_string(), e))?
        {
            let entry = entry.map_err(|e| RuntimeError::io(path.display().to_string(), e))?;
            if !entry.file_type().map(|t| t.is_symlink()).unwrap_or(true) {
                chown_tree(&entry.path(), ids)?;
            }
        }
    }
    Ok(())
}

/// Adds o+x to every ancestor that lacks it, so an unprivileged service user can reach its data.
fn make_traversable(path: &Path) -> Result<(), RuntimeError> {
    for dir in path.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(dir) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))
                .map_err(|e| RuntimeError::io(format!("chmod o+x {}", dir.display()), e))?;
        }
    }
    Ok(())
}

/// Creates `path` (it must not exist) readable and writable by its owner only, holding `bytes`.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut f, bytes)
}

fn tail_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl LocalRuntime {
    /// Services under `home`; the Keycloak distribution (only Keycloak services need it) is
    /// cached in `home/cache`.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        let home = home.into();
        LocalRuntime {
            keycloak: KeycloakDist::new(home.join("cache")),
            home,
            trust: None,
        }
    }

    pub fn from_config(config: &RuntimeConfig) -> Self {
        LocalRuntime {
            home: config.home.clone(),
            keycloak: config.keycloak.clone(),
            trust: config.trust.clone(),
        }
    }

    fn instance_dir(&self, instance: &str) -> PathBuf {
        self.home.join("instances").join(instance)
    }

    fn pid_path(&self, instance: &str, name: &str) -> PathBuf {
        self.instance_dir(instance)
            .join("services")
            .join(format!("{name}.json"))
    }

    /// Where a service's [`ServiceSpec::files`] are: a directory only its user reads.
    fn files_dir(&self, instance: &str, name: &str) -> PathBuf {
        self.instance_dir(instance)
            .join("services")
            .join(format!("{name}.files"))
    }

    /// Writes `spec.files` afresh: the directory 0700, the files 0600, owned by the service's
    /// user (`ids`) when dive runs as root.
    fn write_files(&self, spec: &ServiceSpec, ids: Option<(u32, u32)>) -> Result<(), RuntimeError> {
        let dir = self.files_dir(&spec.instance, &spec.name);
        let io = |e| RuntimeError::io(dir.display().to_string(), e);
        let _ = std::fs::remove_dir_all(&dir);
        if spec.files.is_empty() {
            return Ok(());
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        for (name, file) in &spec.files {
            crate::check_file_name(name)?;
            write_private(&dir.join(name), file.text().as_bytes()).map_err(io)?;
        }
        if let Some(ids) = ids {
            chown_tree(&dir, ids)?;
        }
        Ok(())
    }

    /// Gives a running service the current content of its live files, each replaced whole
    /// (written beside, then renamed) so the service never reads half a file.
    fn refresh_live_files(&self, spec: &ServiceSpec) -> Result<(), RuntimeError> {
        let ids = self.service_user(spec)?;
        let dir = self.files_dir(&spec.instance, &spec.name);
        let io = |e| RuntimeError::io(dir.display().to_string(), e);
        for (name, file) in spec.files.iter().filter(|(_, f)| f.live) {
            let path = dir.join(name);
            if std::fs::read(&path).is_ok_and(|old| file.is_in(&old)) {
                continue;
            }
            let next = dir.join(format!(".{name}.next"));
            let _ = std::fs::remove_file(&next);
            write_private(&next, file.text().as_bytes()).map_err(io)?;
            if let Some((uid, gid)) = ids {
                std::os::unix::fs::chown(&next, Some(uid), Some(gid)).map_err(io)?;
            }
            std::fs::rename(&next, &path).map_err(io)?;
            tracing::info!(instance = %spec.instance, service = %spec.name, file = %name, "refreshed in place");
        }
        Ok(())
    }

    fn log_path(&self, instance: &str, name: &str) -> PathBuf {
        self.instance_dir(instance)
            .join("logs")
            .join(format!("{name}.log"))
    }

    pub fn data_dir(&self, instance: &str, volume: &str) -> PathBuf {
        self.instance_dir(instance).join("data").join(volume)
    }

    fn read_pid(&self, instance: &str, name: &str) -> Option<PidFile> {
        let text = std::fs::read_to_string(self.pid_path(instance, name)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The pid of our live process for a service, if it runs.
    fn live_pid(&self, instance: &str, name: &str) -> Option<i32> {
        let pf = self.read_pid(instance, name)?;
        (proc_start_time(pf.pid) == Some(pf.start_time)).then_some(pf.pid)
    }

    fn render(&self, spec: &ServiceSpec, text: &str) -> String {
        spec.render(
            text,
            |p| p.host,
            |d| {
                self.data_dir(&spec.instance, &d.volume)
                    .display()
                    .to_string()
            },
            |f| {
                self.files_dir(&spec.instance, &spec.name)
                    .join(f)
                    .display()
                    .to_string()
            },
        )
    }

    fn service_user(&self, spec: &ServiceSpec) -> Result<Option<(u32, u32)>, RuntimeError> {
        match &spec.run_as {
            Some(user) if is_root() => Ok(Some(user_ids(user)?)),
            _ => Ok(None),
        }
    }

    fn base_command(
        &self,
        spec: &ServiceSpec,
        argv: &[String],
        ids: Option<(u32, u32)>,
    ) -> Result<std::process::Command, RuntimeError> {
        let argv: Vec<String> = argv.iter().map(|a| self.render(spec, a)).collect();
        let (program, args) = argv.split_first().ok_or_else(|| {
            RuntimeError::Invalid(format!("service {}: command is empty", spec.name))
        })?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .env(
                "PATH",
                std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            )
            .env("LANG", "C.UTF-8")
            .env("HOME", self.instance_dir(&spec.instance))
            .current_dir(self.instance_dir(&spec.instance))
            .stdin(Stdio::null());
        for (k, v) in &spec.env {
            cmd.env(k, self.render(spec, v));
        }
        if let Some((uid, gid)) = ids {
            cmd.uid(uid).gid(gid);
        }
        Ok(cmd)
    }

    /// Runs the one-time init if its marker is missing.
    async fn init(&self, spec: &ServiceSpec, ids: Option<(u32, u32)>) -> Result<(), RuntimeError> {
        let Some(init) = &spec.init else {
            return Ok(());
        };
        if Path::new(&self.render(spec, &init.creates)).exists() {
            return Ok(());
        }
        let scratch = self
            .instance_dir(&spec.instance)
            .join(format!(".init-{}", spec.name));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch)
            .map_err(|e| RuntimeError::io(scratch.display().to_string(), e))?;
        std::fs::set_permissions(&scratch, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| RuntimeError::io(scratch.display().to_string(), e))?;
        let mut argv = init.command.clone();
        for (name, content) in &init.secret_files {
            let file = scratch.join(name);
            std::fs::write(&file, content)
                .map_err(|e| RuntimeError::io(file.display().to_string(), e))?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| RuntimeError::io(file.display().to_string(), e))?;
            for a in &mut argv {
                *a = a.replace(&format!("{{file:{name}}}"), &file.display().to_string());
            }
        }
        if let Some(ids) = ids {
            chown_tree(&scratch, ids)?;
        }
        let cmd = self.base_command(spec, &argv, ids)?;
        let output = tokio::process::Command::from(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await;
        let _ = std::fs::remove_dir_all(&scratch);
        let output =
            output.map_err(|e| RuntimeError::io(format!("running init of {}", spec.name), e))?;
        if !output.status.success() {
            return Err(RuntimeError::Service {
                service: spec.name.clone(),
                message: format!(
                    "init `{}` failed ({}): {}",
                    init.command.first().map(String::as_str).unwrap_or(""),
                    output.status,
                    tail_lines(&String::from_utf8_lossy(&output.stderr), 5)
                ),
            });
        }
        Ok(())
    }

    async fn spawn(&self, spec: &ServiceSpec) -> Result<(), RuntimeError> {
        let ids = self.service_user(spec)?;
        let dir = self.instance_dir(&spec.instance);
        for sub in ["services", "logs"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| RuntimeError::io(dir.display().to_string(), e))?;
        }
        for d in &spec.data {
            self.ensure_data(&spec.instance, &d.volume).await?;
            if let Some(ids) = ids {
                chown_tree(&self.data_dir(&spec.instance, &d.volume), ids)?;
            }
        }
        if ids.is_some() {
            make_traversable(&dir.join("data"))?;
        }
        self.init(spec, ids).await?;
        self.write_files(spec, ids)?;
        let log_path = self.log_path(&spec.instance, &spec.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| RuntimeError::io(log_path.display().to_string(), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| RuntimeError::io(log_path.display().to_string(), e))?;
        let mut cmd = self.base_command(spec, &spec.command, ids)?;
        cmd.stdout(log).stderr(log2);
        // SAFETY: setsid is async-signal-safe; it detaches the service into its own session and
        // process group so it outlives us and can be stopped as a group.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| RuntimeError::Service {
            service: spec.name.clone(),
            message: format!(
                "cannot start `{}`: {e}",
                spec.command.first().map(String::as_str).unwrap_or("")
            ),
        })?;
        let pid = child.id() as i32;
        let Some(start_time) = proc_start_time(pid) else {
            let _ = child.wait();
            return Err(RuntimeError::Service {
                service: spec.name.clone(),
                message: format!(
                    "exited at once; last log lines:\n{}",
                    self.log_tail(&spec.instance, &spec.name, 15)
                ),
            });
        };
        // Reap it if it exits while we live, so it never lingers as a zombie.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let pf = PidFile {
            pid,
            start_time,
            digest: spec.digest(),
            started_at: chrono::Utc::now(),
        };
        let path = self.pid_path(&spec.instance, &spec.name);
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&pf).expect("pid file serialises"),
        )
        .map_err(|e| RuntimeError::io(path.display().to_string(), e))?;
        Ok(())
    }

    async fn check_health(&self, spec: &ServiceSpec) -> Result<(), String> {
        match &spec.health {
            None => Ok(()),
            Some(Health::Http { port, path, tls }) => {
                http_check(host_port(spec, port)?, path, *tls, self.trust.as_ref()).await
            }
            Some(Health::Tcp { port }) => tcp_ok(host_port(spec, port)?).await,
            Some(Health::Command { command }) => {
                let cmd = self
                    .base_command(spec, command, None)
                    .map_err(|e| e.to_string())?;
                match tokio::process::Command::from(cmd)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .await
                {
                    Ok(s) if s.success() => Ok(()),
                    Ok(s) => Err(format!("health command {s}")),
                    Err(e) => Err(format!("health command: {e}")),
                }
            }
        }
    }

    fn log_tail(&self, instance: &str, name: &str, lines: usize) -> String {
        std::fs::read_to_string(self.log_path(instance, name))
            .map(|t| tail_lines(&t, lines))
            .unwrap_or_default()
    }
}

fn host_port(spec: &ServiceSpec, name: &str) -> Result<u16, String> {
    spec.host_port(name)
        .ok_or_else(|| format!("health check names unknown port `{name}`"))
}

/// Sends `signal` to a process group.
fn signal_group(pid: i32, signal: i32) {
    // SAFETY: kill(2) on a process group we created with setsid.
    unsafe {
        libc::kill(-pid, signal);
    }
}

#[async_trait]
impl Runtime for LocalRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::LOCAL
    }

    /// PostgreSQL from the machine's binaries (initdb with the password from a file, run as
    /// `postgres` when dive is root); Keycloak from the built distribution, `--optimized`.
    async fn builtin(&self, spec: &mut ServiceSpec, which: Builtin) -> Result<(), RuntimeError> {
        match which {
            Builtin::Postgres { password } => {
                let bin = dive_pgcluster::find_bin_dir()
                    .map_err(|e| RuntimeError::Invalid(e.to_string()))?;
                let tool = |t: &str| bin.join(t).display().to_string();
                spec.command = vec![
                    tool("postgres"),
                    "-D".into(),
                    "{data:pgdata}".into(),
                    "-p".into(),
                    "{port:postgres}".into(),
                    "-k".into(),
                    "{data:pgdata}".into(),
                    "-c".into(),
                    "listen_addresses=127.0.0.1".into(),
                ];
                spec.run_as = Some("postgres".into());
                spec.init = Some(InitSpec {
                    command: vec![
                        tool("initdb"),
                        "-D".into(),
                        "{data:pgdata}".into(),
                        "--username=postgres".into(),
                        "--auth=scram-sha-256".into(),
                        "--pwfile={file:pwfile}".into(),
                        "--encoding=UTF8".into(),
                        "--no-locale".into(),
                    ],
                    creates: "{data:pgdata}/PG_VERSION".into(),
                    secret_files: BTreeMap::from([("pwfile".to_string(), password)]),
                });
                spec.health = Some(pg_isready(tool("pg_isready"), "{port:postgres}".into()));
            }
            Builtin::Keycloak => {
                let dist = self
                    .keycloak
                    .instance_copy(&self.instance_dir(&spec.instance))
                    .await?;
                spec.command = vec![
                    dist.join("bin/kc.sh").display().to_string(),
                    "start".into(),
                    "--optimized".into(),
                    // Every socket on loopback: HTTPS (its port comes from the template's
                    // KC_HTTPS_PORT), management, and the local cache opens no cluster port.
                    "--http-host=127.0.0.1".into(),
                    "--http-management-port={port:management}".into(),
                ];
                spec.command
                    .extend(START_OPTIONS.iter().map(|o| o.to_string()));
            }
        }
        Ok(())
    }

    fn check_spec(&self, spec: &ServiceSpec) -> Result<(), RuntimeError> {
        if spec.command.is_empty() {
            return Err(RuntimeError::Invalid(
                "`command` is required on the local runtime".into(),
            ));
        }
        Ok(())
    }

    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError> {
        // Local services share the host's loopback; there is nothing to create.
        check_name("network", name)
    }

    async fn ensure_data(&self, instance: &str, volume: &str) -> Result<(), RuntimeError> {
        check_name("instance", instance)?;
        check_name("volume", volume)?;
        let dir = self.data_dir(instance, volume);
        std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::io(dir.display().to_string(), e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| RuntimeError::io(dir.display().to_string(), e))
    }

    async fn plan_service(&self, spec: &ServiceSpec) -> Result<Ensured, RuntimeError> {
        check_name("instance", &spec.instance)?;
        check_name("service", &spec.name)?;
        let existing = self.read_pid(&spec.instance, &spec.name);
        let running = self.live_pid(&spec.instance, &spec.name).is_some();
        Ok(Ensured::decide(
            existing.map(|pf| pf.digest == spec.digest()),
            running,
        ))
    }

    async fn ensure_service(&self, spec: &ServiceSpec) -> Result<Ensured, RuntimeError> {
        let outcome = self.plan_service(spec).await?;
        match outcome {
            Ensured::Unchanged => self.refresh_live_files(spec)?,
            Ensured::Recreated | Ensured::Started => {
                if self.live_pid(&spec.instance, &spec.name).is_some() {
                    self.stop(&spec.instance, &spec.name).await?;
                }
                self.spawn(spec).await?;
            }
            Ensured::Created => self.spawn(spec).await?,
        }
        let took = wait_ready(
            &spec.name,
            spec.ready_timeout,
            || self.check_health(spec),
            || async {
                match self.live_pid(&spec.instance, &spec.name) {
                    Some(_) => Ok(()),
                    None => Err(format!(
                        "process exited; last log lines:\n{}",
                        self.log_tail(&spec.instance, &spec.name, 15)
                    )),
                }
            },
        )
        .await?;
        tracing::info!(instance = %spec.instance, service = %spec.name, ?outcome, ?took, "service ready");
        Ok(outcome)
    }

    async fn stop(&self, instance: &str, name: &str) -> Result<(), RuntimeError> {
        let Some(pid) = self.live_pid(instance, name) else {
            return Ok(());
        };
        signal_group(pid, libc::SIGTERM);
        let deadline = std::time::Instant::now() + STOP_GRACE;
        while std::time::Instant::now() < deadline {
            if self.live_pid(instance, name).is_none() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(
            instance,
            service = name,
            "no exit after SIGTERM; sending SIGKILL"
        );
        signal_group(pid, libc::SIGKILL);
        for _ in 0..100 {
            if self.live_pid(instance, name).is_none() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(RuntimeError::Service {
            service: name.to_string(),
            message: format!("process {pid} survived SIGKILL"),
        })
    }

    async fn remove(
        &self,
        instance: &str,
        name: &str,
        data: &[String],
    ) -> Result<(), RuntimeError> {
        self.stop(instance, name).await?;
        let path = self.pid_path(instance, name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RuntimeError::io(path.display().to_string(), e)),
        }
        let files = self.files_dir(instance, name);
        for dir in data
            .iter()
            .map(|volume| self.data_dir(instance, volume))
            .chain([files])
        {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(RuntimeError::io(dir.display().to_string(), e)),
            }
        }
        Ok(())
    }

    async fn status(&self, instance: &str, name: &str) -> Result<ServiceStatus, RuntimeError> {
        let state = match (self.read_pid(instance, name), self.live_pid(instance, name)) {
            (None, _) => ServiceState::Missing,
            (Some(_), None) => ServiceState::Stopped,
            (Some(_), Some(_)) => ServiceState::Running,
        };
        Ok(ServiceStatus {
            name: name.to_string(),
            state,
            health: "unknown".into(),
        })
    }

    async fn logs_tail(
        &self,
        instance: &str,
        name: &str,
        lines: usize,
    ) -> Result<String, RuntimeError> {
        Ok(self.log_tail(instance, name, lines))
    }

    async fn managed(&self) -> Result<Vec<Resource>, RuntimeError> {
        let mut found = Vec::new();
        let Ok(instances) = std::fs::read_dir(self.home.join("instances")) else {
            return Ok(found);
        };
        for inst in instances.flatten() {
            let code = inst.file_name().to_string_lossy().to_string();
            if let Ok(services) = std::fs::read_dir(inst.path().join("services")) {
                for s in services.flatten() {
                    if let Some(name) = s.file_name().to_string_lossy().strip_suffix(".json") {
                        found.push(Resource {
                            kind: ResourceKind::Service,
                            name: format!("{code}/{name}"),
                            instance: Some(code.clone()),
                        });
                    }
                }
            }
            found.push(Resource {
                kind: ResourceKind::Directory,
                name: inst.path().display().to_string(),
                instance: Some(code),
            });
        }
        Ok(found)
    }

    async fn remove_resource(&self, resource: &Resource) -> Result<(), RuntimeError> {
        match resource.kind {
            ResourceKind::Service => {
                let (instance, name) = resource.name.split_once('/').ok_or_else(|| {
                    RuntimeError::Invalid(format!("bad service name `{}`", resource.name))
                })?;
                self.remove(instance, name, &[]).await
            }
            ResourceKind::Directory => {
                let dir = Path::new(&resource.name);
                if !dir.starts_with(self.home.join("instances")) {
                    return Err(RuntimeError::Invalid(format!(
                        "refusing to remove {} outside {}",
                        dir.display(),
                        self.home.join("instances").display()
                    )));
                }
                std::fs::remove_dir_all(dir).or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(RuntimeError::io(dir.display().to_string(), e)),
                })
            }
            other => Err(RuntimeError::Invalid(format!(
                "the local runtime has no {other} resources"
            ))),
        }
    }
}
