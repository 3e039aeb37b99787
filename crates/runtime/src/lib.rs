//! dive-runtime: where services run. Two runtimes behind one trait: `local` (supervised OS
//! processes on 127.0.0.1, the embedded default) and `docker` (containers through bollard). Deploy
//! phases only see [`Runtime`]; a [`ServiceSpec`] says what to run in terms both understand. Also
//! here: the readiness probes both runtimes use ([`health`]) and the Keycloak server distribution
//! the local runtime starts ([`keycloak_dist`]). No engine types: the phase types that drive a
//! runtime live in dive-phases.
//!
//! Inside `command`, `env` and health commands, `{port:NAME}` and `{data:NAME}` stand for the
//! port a service listens on and the directory of a data volume *as the service sees them*: the
//! host port and a host directory locally, the container port and the mount target in Docker.

pub mod docker;
pub mod health;
pub mod keycloak_dist;
pub mod local;
mod templates;

pub use keycloak_dist::KeycloakDist;
pub use templates::{
    KEYCLOAK_HTTPS_PORT, KeycloakTls, POSTGRES_IMAGE, keycloak_template, postgres_template,
};

use async_trait::async_trait;
use dive_tls::Trust;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Which runtime a run uses (`--runtime` / `DIVE_RUNTIME`): one of [`RUNTIMES`], by name.
/// Stored as its name (plans, the instance registry), and parsed back only if a runtime of that
/// name is registered.
#[derive(Clone, Copy)]
pub struct RuntimeKind(&'static RuntimeEntry);

impl RuntimeKind {
    /// Supervised processes on 127.0.0.1 (the default).
    pub const LOCAL: RuntimeKind = RuntimeKind(&local::ENTRY);
    /// Containers through the Docker engine.
    pub const DOCKER: RuntimeKind = RuntimeKind(&docker::ENTRY);

    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// Connects to this runtime (Docker: reaches the daemon and agrees on an API version).
    pub async fn connect(self, config: &RuntimeConfig) -> Result<Arc<dyn Runtime>, RuntimeError> {
        (self.0.connect)(config.clone()).await
    }

    /// Where a service of *another* instance on this runtime reaches `port` of `service` of
    /// `instance` (the federation back channel): `(host, port)`.
    pub fn peer_addr(self, instance: &str, service: &str, port: &PortSpec) -> (String, u16) {
        (self.0.peer_addr)(instance, service, port)
    }

    /// Where another service of the *same* instance reaches it (Keycloak its PostgreSQL).
    pub fn sibling_addr(self, instance: &str, service: &str, port: &PortSpec) -> (String, u16) {
        (self.0.sibling_addr)(instance, service, port)
    }

    /// Every registered runtime, the default first.
    pub fn all() -> impl Iterator<Item = RuntimeKind> {
        RUNTIMES.iter().map(RuntimeKind)
    }
}

impl Default for RuntimeKind {
    fn default() -> Self {
        RuntimeKind(&RUNTIMES[0])
    }
}

impl PartialEq for RuntimeKind {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for RuntimeKind {}

impl fmt::Debug for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl std::str::FromStr for RuntimeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RuntimeKind::all().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<&str> = RuntimeKind::all().map(RuntimeKind::name).collect();
            format!("unknown runtime `{s}` (expected {})", names.join(" or "))
        })
    }
}

impl Serialize for RuntimeKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for RuntimeKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A runtime being connected to.
pub type Connecting = BoxFuture<'static, Result<Arc<dyn Runtime>, RuntimeError>>;

/// One runtime dive can use: its name, how to connect to it and how its services address
/// each other. Each runtime's file defines one as `ENTRY`.
pub struct RuntimeEntry {
    pub name: &'static str,
    pub connect: fn(RuntimeConfig) -> Connecting,
    pub peer_addr: fn(&str, &str, &PortSpec) -> (String, u16),
    pub sibling_addr: fn(&str, &str, &PortSpec) -> (String, u16),
}

/// Every runtime dive knows, the default first. Adding one (Kubernetes, a remote Docker host) is
/// its own file implementing [`Runtime`] and one line here.
pub static RUNTIMES: &[RuntimeEntry] = &[local::ENTRY, docker::ENTRY];

/// What the runtimes are configured with, read once at start-up by the caller (the CLI reads
/// flags and environment; nothing in this crate does).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where local services keep their files (`DIVE_HOME`).
    pub home: PathBuf,
    /// The Keycloak distribution the local runtime starts.
    pub keycloak: KeycloakDist,
    /// The Keycloak image on Docker; `None`: the official one of [`KeycloakDist::version`].
    pub keycloak_image: Option<String>,
    /// The dive CA, for HTTPS health checks (`Health::Http { tls: true }`).
    pub trust: Option<Trust>,
}

impl RuntimeConfig {
    /// Local services under `home`, downloads in `cache`, the pinned Keycloak, its official image.
    pub fn new(home: impl Into<PathBuf>, cache: impl Into<PathBuf>) -> RuntimeConfig {
        RuntimeConfig {
            home: home.into(),
            keycloak: KeycloakDist::new(cache),
            keycloak_image: None,
            trust: None,
        }
    }
}

/// A port a service listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub name: String,
    /// Port inside the container (Docker); ignored locally.
    pub container: u16,
    /// Port on 127.0.0.1 of the host, both runtimes.
    pub host: u16,
}

/// A persistent data volume mounted into a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataMount {
    pub volume: String,
    /// Mount point inside the container (Docker); locally the data directory itself is used.
    pub target: String,
}

/// How readiness is decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Health {
    /// An HTTP GET on `127.0.0.1:<host port>` answering 2xx; with `tls`, HTTPS with the
    /// certificate checked against the dive CA ([`RuntimeConfig::trust`]).
    Http {
        port: String,
        path: String,
        #[serde(default)]
        tls: bool,
    },
    /// A TCP connect to `127.0.0.1:<host port>`.
    Tcp { port: String },
    /// A command exiting 0 (run on the host locally, inside the container in Docker).
    Command { command: Vec<String> },
}

/// A one-time initialisation before a service's first start (local runtime; images do their own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitSpec {
    pub command: Vec<String>,
    /// A path (with placeholders) whose existence means the init already happened.
    pub creates: String,
    /// Files written (0600, owned by the service user) for the init only, then removed;
    /// `{file:NAME}` in the command names them. Used to pass passwords without argv or env.
    #[serde(skip_serializing)]
    #[serde(default)]
    pub secret_files: BTreeMap<String, String>,
}

/// What to run, for either runtime.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Instance code, lower case (`usa`).
    pub instance: String,
    pub name: String,
    /// Container image (Docker).
    pub image: String,
    /// Program and arguments (local), or the container command (Docker; empty = image default).
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Files the service reads secrets (and certificates) from, by name: `{file:NAME}` in
    /// `command` and `env` is the path the service sees. They reach the service as files only
    /// (0600, owned by the service's user; never argv or environment, so never in
    /// `/proc/PID/environ` or `docker inspect`) and are never serialised or shown.
    #[serde(skip)]
    pub files: BTreeMap<String, ServiceFile>,
    pub ports: Vec<PortSpec>,
    pub data: Vec<DataMount>,
    pub health: Option<Health>,
    #[serde(with = "humantime_serde")]
    pub ready_timeout: Duration,
    /// Local runtime: the unprivileged user to run as when dive runs as root.
    pub run_as: Option<String>,
    /// Local runtime: initialisation before the first start.
    pub init: Option<InitSpec>,
    /// Docker: extra networks to join besides `dive-<instance>`.
    pub networks: Vec<String>,
}

impl fmt::Debug for ServiceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceSpec")
            .field("instance", &self.instance)
            .field("name", &self.name)
            .field("image", &self.image)
            .field("command", &self.command)
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

impl ServiceSpec {
    /// A digest of everything that shapes the running service (file contents included, so a
    /// changed secret recreates it; only the digest is ever stored). The bootstrap parts of
    /// files are left out (they do not shape a service that is already initialised), and so
    /// are live files (a running service is given their new content in place).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(self).expect("spec serialises"));
        for (name, file) in self.files.iter().filter(|(_, f)| !f.live) {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(file.content.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..16])
    }

    pub fn host_port(&self, name: &str) -> Option<u16> {
        self.ports.iter().find(|p| p.name == name).map(|p| p.host)
    }

    /// Replaces `{port:NAME}`, `{data:NAME}` and `{file:NAME}` as the service sees them.
    pub fn render(
        &self,
        text: &str,
        port: impl Fn(&PortSpec) -> u16,
        data: impl Fn(&DataMount) -> String,
        file: impl Fn(&str) -> String,
    ) -> String {
        let mut out = text.to_string();
        for p in &self.ports {
            out = out.replace(&format!("{{port:{}}}", p.name), &port(p).to_string());
        }
        for d in &self.data {
            out = out.replace(&format!("{{data:{}}}", d.volume), &data(d));
        }
        for name in self.files.keys() {
            out = out.replace(&format!("{{file:{name}}}"), &file(name));
        }
        out
    }
}

/// What the first line of a [stamped](ServiceFile::live_stamped) file starts with.
const STAMP: &str = "Written by dive at ";

/// `text` without its stamp line, if it has one.
fn unstamped(text: &str) -> &str {
    text.strip_prefix(STAMP)
        .and_then(|rest| rest.split_once('\n'))
        .map_or(text, |(_, body)| body)
}

/// One file of [`ServiceSpec::files`]: what the service reads is `content` followed by
/// `bootstrap`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ServiceFile {
    pub content: String,
    /// What the service reads only when it first initialises its data (the database
    /// superuser's password, Keycloak's first admin): left out of the
    /// [digest](ServiceSpec::digest), so rotating it — which dive does through the running
    /// service — is no reason to restart it.
    pub bootstrap: String,
    /// The service rereads this file by itself while it runs (Keycloak its certificate and key,
    /// every 30 s): a new content is written in place on the running service instead of
    /// restarting it, so the file is left out of the digest.
    pub live: bool,
}

impl ServiceFile {
    pub fn new(content: impl Into<String>) -> ServiceFile {
        ServiceFile {
            content: content.into(),
            ..ServiceFile::default()
        }
    }

    /// A file the running service rereads by itself ([`ServiceFile::live`]).
    pub fn live(content: impl Into<String>) -> ServiceFile {
        ServiceFile {
            content: content.into(),
            live: true,
            ..ServiceFile::default()
        }
    }

    /// A live PEM file behind a first line saying when dive wrote it (RFC 7468 allows text
    /// before a PEM block). Keycloak (Quarkus) rereads its certificate files every reload period
    /// but takes them up only when they differ from what it *started* with, so a file put back
    /// to that content — a renewal rolled back, a tampered file repaired — would never be taken
    /// up; the stamp makes every write differ. Runtimes write a live file only when its content
    /// changed ([`ServiceFile::is_in`] does not count the stamp): each take-up drops the TLS
    /// handshakes under way at that instant, so rewriting an unchanged certificate on every
    /// deploy would cost logins for nothing.
    pub fn live_stamped(pem: &str) -> ServiceFile {
        ServiceFile::live(format!(
            "{STAMP}{}\n{pem}",
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        ))
    }

    /// Whether `on_disk`, what the service reads now, already says what this file says: the
    /// stamp line of [`ServiceFile::live_stamped`] not counted.
    pub fn is_in(&self, on_disk: &[u8]) -> bool {
        std::str::from_utf8(on_disk).is_ok_and(|old| unstamped(old) == unstamped(&self.text()))
    }

    /// A file read only on the first start.
    pub fn bootstrap(content: impl Into<String>) -> ServiceFile {
        ServiceFile {
            bootstrap: content.into(),
            ..ServiceFile::default()
        }
    }

    /// What the service reads.
    pub fn text(&self) -> String {
        format!("{}{}", self.content, self.bootstrap)
    }
}

impl fmt::Debug for ServiceFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceFile(..)")
    }
}

/// A name of [`ServiceSpec::files`]: letters, digits, `.`, `-`, `_`.
pub fn check_file_name(name: &str) -> Result<(), RuntimeError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Invalid(format!(
            "file name `{name}` must be letters, digits, `.`, `-` or `_` (at most 64, not starting with `.`)"
        )))
    }
}

/// What `ensure_service` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ensured {
    /// Already running with the same spec: left alone.
    Unchanged,
    Created,
    /// Was there with a different spec (or stopped): replaced and started.
    Recreated,
    /// Was stopped with the same spec: started again.
    Started,
}

impl Ensured {
    /// What ensuring a service does, from what is there: `same_spec` is `None` when no service
    /// of that name exists, else whether its recorded digest is the spec's; `running`, whether
    /// it runs. Both runtimes decide (and plan) with this.
    pub fn decide(same_spec: Option<bool>, running: bool) -> Ensured {
        match (same_spec, running) {
            (None, _) => Ensured::Created,
            (Some(true), true) => Ensured::Unchanged,
            (Some(true), false) => Ensured::Started,
            (Some(false), _) => Ensured::Recreated,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Running,
    Stopped,
    Missing,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    /// `healthy`, `unhealthy`, or `unknown` (not running / no check).
    pub health: String,
}

/// What kind of thing a runtime created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceKind {
    /// A supervised local process.
    Service,
    Container,
    Volume,
    Network,
    /// An instance's directory of files (local).
    Directory,
}

impl ResourceKind {
    /// Removal order: things that use others go first.
    pub fn removal_rank(self) -> u8 {
        match self {
            ResourceKind::Service | ResourceKind::Container => 0,
            ResourceKind::Volume => 1,
            ResourceKind::Network => 2,
            ResourceKind::Directory => 3,
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            ResourceKind::Service => "service",
            ResourceKind::Container => "container",
            ResourceKind::Volume => "volume",
            ResourceKind::Network => "network",
            ResourceKind::Directory => "directory",
        })
    }
}

/// Something a runtime created, for cleanup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    pub kind: ResourceKind,
    pub name: String,
    /// The instance (code, lower case) it belongs to; `None` for what instances share (the
    /// `dive-federation` network).
    pub instance: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(String),
    #[error("service {service}: {message}")]
    Service { service: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    #[error(transparent)]
    Dist(#[from] keycloak_dist::DistError),
}

impl RuntimeError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            what: what.into(),
            source,
        }
    }
}

use dive_error::Classify;

impl Classify for RuntimeError {
    /// Whether trying again later can help (daemon hiccups, a service still starting).
    fn is_retryable(&self) -> bool {
        match self {
            RuntimeError::Invalid(_) => false,
            RuntimeError::Dist(e) => e.is_retryable(),
            _ => true,
        }
    }
}

mod sealed {
    /// Only this crate's runtimes implement [`super::Runtime`]: callers can rely on the set
    /// in [`super::RUNTIMES`] being all there is.
    pub trait Sealed {}
}

/// A service dive defines itself; each runtime knows how to run it ([`Runtime::builtin`]).
pub enum Builtin {
    /// PostgreSQL 15; its superuser's password is given to the first start only.
    Postgres { password: String },
    /// Keycloak for PostgreSQL, health on its management port.
    Keycloak,
}

/// Where services run. Sealed: the runtimes are the ones in [`RUNTIMES`].
#[async_trait]
pub trait Runtime: sealed::Sealed + Send + Sync {
    fn kind(&self) -> RuntimeKind;
    /// Breaker key for calls into this runtime (e.g. the Docker daemon).
    fn breaker_key(&self) -> Option<String> {
        None
    }
    /// Fills in what only this runtime knows about a built-in service (program or image,
    /// initialisation, health command, networks); the runtime-neutral part is done by
    /// [`postgres_template`] and [`keycloak_template`].
    async fn builtin(&self, spec: &mut ServiceSpec, which: Builtin) -> Result<(), RuntimeError>;
    /// Checks that a spec has what this runtime needs (an image, a command).
    fn check_spec(&self, spec: &ServiceSpec) -> Result<(), RuntimeError>;
    /// The private network of an instance (and the shared federation network).
    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError>;
    /// Persistent data for `instance`: a directory or a volume.
    async fn ensure_data(&self, instance: &str, volume: &str) -> Result<(), RuntimeError>;
    /// Makes `spec` run and be healthy; idempotent.
    async fn ensure_service(&self, spec: &ServiceSpec) -> Result<Ensured, RuntimeError>;
    /// What [`Runtime::ensure_service`] would do with `spec` now, without doing anything (a
    /// dry run).
    async fn plan_service(&self, spec: &ServiceSpec) -> Result<Ensured, RuntimeError>;
    /// Stops a service, keeping it and its data.
    async fn stop(&self, instance: &str, name: &str) -> Result<(), RuntimeError>;
    /// Removes a service; its data volumes too when `data` is given.
    async fn remove(&self, instance: &str, name: &str, data: &[String])
    -> Result<(), RuntimeError>;
    async fn status(&self, instance: &str, name: &str) -> Result<ServiceStatus, RuntimeError>;
    async fn logs_tail(
        &self,
        instance: &str,
        name: &str,
        lines: usize,
    ) -> Result<String, RuntimeError>;
    /// Everything this runtime created (for `dive cleanup`).
    async fn managed(&self) -> Result<Vec<Resource>, RuntimeError>;
    /// What this runtime created for `instance` (code, any case).
    async fn owned_by(&self, instance: &str) -> Result<Vec<Resource>, RuntimeError> {
        let code = instance.to_ascii_lowercase();
        let mut found: Vec<Resource> = self
            .managed()
            .await?
            .into_iter()
            .filter(|r| r.instance.as_deref() == Some(code.as_str()))
            .collect();
        found.sort_by_key(|r| r.kind.removal_rank());
        Ok(found)
    }
    /// Removes one resource listed by [`Runtime::managed`].
    async fn remove_resource(&self, resource: &Resource) -> Result<(), RuntimeError>;
}

/// Checks a name used in service, volume and network names.
pub fn check_name(what: &str, name: &str) -> Result<(), RuntimeError> {
    let ok = !name.is_empty()
        && name.len() <= 48
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Invalid(format!(
            "{what} `{name}` must be lower-case letters, digits, `-` or `_` (at most 48)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_file_is_the_same_whatever_its_stamp() {
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let written = ServiceFile::live_stamped(cert).text();
        assert!(
            written.starts_with(STAMP) && written.ends_with(cert),
            "{written}"
        );
        std::thread::sleep(Duration::from_millis(2));
        let again = ServiceFile::live_stamped(cert);
        assert_ne!(again.text(), written, "every write differs");
        assert!(again.is_in(written.as_bytes()), "but says the same");
        assert!(
            again.is_in(cert.as_bytes()),
            "an unstamped copy says the same too"
        );
        let renewed = ServiceFile::live_stamped(&cert.replace("AAAA", "BBBB"));
        assert!(!renewed.is_in(written.as_bytes()));
        let key = ServiceFile::live("-----BEGIN PRIVATE KEY-----\n");
        assert!(key.is_in(b"-----BEGIN PRIVATE KEY-----\n"));
        assert!(!key.is_in(b"-----BEGIN PRIVATE KEY-----\nX"));
        assert!(!key.is_in(&[0xff, 0xfe]), "not text: not the same");
    }

    #[test]
    fn secrets_change_the_digest_and_bootstrap_secrets_do_not() {
        let spec = ServiceSpec {
            instance: "fra".into(),
            name: "keycloak".into(),
            image: String::new(),
            command: vec!["kc.sh".into()],
            env: BTreeMap::new(),
            files: BTreeMap::from([(
                "keycloak.conf".into(),
                ServiceFile {
                    content: "db-password=a\n".into(),
                    bootstrap: "bootstrap-admin-password=x\n".into(),
                    live: false,
                },
            )]),
            ports: Vec::new(),
            data: Vec::new(),
            health: None,
            ready_timeout: Duration::from_secs(1),
            run_as: None,
            init: None,
            networks: Vec::new(),
        };
        let mut other = spec.clone();
        let file = other.files.get_mut("keycloak.conf").unwrap();
        file.bootstrap = "bootstrap-admin-password=y\n".into();
        assert_eq!(other.digest(), spec.digest());
        other.files.get_mut("keycloak.conf").unwrap().content = "db-password=b\n".into();
        assert_ne!(other.digest(), spec.digest());
        let mut renewed = other.clone();
        renewed
            .files
            .insert("tls.crt".into(), ServiceFile::live("one certificate"));
        let digest = renewed.digest();
        renewed
            .files
            .insert("tls.crt".into(), ServiceFile::live("the next one"));
        assert_eq!(
            renewed.digest(),
            digest,
            "a live file is refreshed in place"
        );
        assert!(
            !format!("{spec:?}").contains("password"),
            "values are not shown"
        );
        assert_eq!(
            spec.render(
                "--config-file={file:keycloak.conf}",
                |p| p.host,
                |d| d.target.clone(),
                |n| format!("/run/dive/{n}")
            ),
            "--config-file=/run/dive/keycloak.conf"
        );
        assert!(check_file_name("tls.key").is_ok());
        assert!(check_file_name("../etc/passwd").is_err());
    }

    #[test]
    fn runtimes_are_known_by_name_and_nothing_else_parses() {
        let names: Vec<&str> = RuntimeKind::all().map(RuntimeKind::name).collect();
        assert_eq!(names, ["local", "docker"]);
        assert_eq!(RuntimeKind::default(), RuntimeKind::LOCAL);
        assert_eq!("docker".parse::<RuntimeKind>(), Ok(RuntimeKind::DOCKER));
        assert_eq!(
            "k8s".parse::<RuntimeKind>().unwrap_err(),
            "unknown runtime `k8s` (expected local or docker)"
        );
        let json = serde_json::to_string(&RuntimeKind::DOCKER).unwrap();
        assert_eq!(json, "\"docker\"");
        assert_eq!(
            serde_json::from_str::<RuntimeKind>(&json).unwrap(),
            RuntimeKind::DOCKER
        );
        assert!(serde_json::from_str::<RuntimeKind>("\"k8s\"").is_err());
    }

    #[test]
    fn each_runtime_says_how_its_services_reach_each_other() {
        let http = PortSpec {
            name: "http".into(),
            container: 8080,
            host: 20011,
        };
        assert_eq!(
            RuntimeKind::LOCAL.peer_addr("fra", "keycloak", &http),
            ("127.0.0.1".to_string(), 20011)
        );
        assert_eq!(
            RuntimeKind::DOCKER.peer_addr("fra", "keycloak", &http),
            ("dive-fra-keycloak".to_string(), 8080)
        );
        assert_eq!(
            RuntimeKind::DOCKER.sibling_addr("fra", "postgres", &http),
            ("postgres".to_string(), 8080)
        );
    }

    #[test]
    fn resources_go_users_first() {
        let mut kinds = [
            ResourceKind::Network,
            ResourceKind::Directory,
            ResourceKind::Volume,
            ResourceKind::Container,
        ];
        kinds.sort_by_key(|k| k.removal_rank());
        assert_eq!(
            kinds,
            [
                ResourceKind::Container,
                ResourceKind::Volume,
                ResourceKind::Network,
                ResourceKind::Directory
            ]
        );
    }
}
