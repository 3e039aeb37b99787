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

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Which runtime a run uses (`--runtime` / `DIVE_RUNTIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Local,
    Docker,
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            RuntimeKind::Local => "local",
            RuntimeKind::Docker => "docker",
        })
    }
}

impl std::str::FromStr for RuntimeKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(RuntimeKind::Local),
            "docker" => Ok(RuntimeKind::Docker),
            other => Err(format!(
                "unknown runtime `{other}` (expected local or docker)"
            )),
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
    /// An HTTP GET on `127.0.0.1:<host port>` answering 2xx.
    Http { port: String, path: String },
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
    /// Environment values that are secrets: passed to the service, never shown.
    #[serde(skip_serializing)]
    #[serde(default)]
    pub secret_env: BTreeMap<String, String>,
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
            .field("secret_env", &self.secret_env.keys().collect::<Vec<_>>())
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

impl ServiceSpec {
    /// A digest of everything that shapes the running service (secret values included, so a
    /// changed secret recreates it; only the digest is ever stored).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(self).expect("spec serialises"));
        for (k, v) in &self.secret_env {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..16])
    }

    pub fn host_port(&self, name: &str) -> Option<u16> {
        self.ports.iter().find(|p| p.name == name).map(|p| p.host)
    }

    /// Replaces `{port:NAME}` and `{data:NAME}` as the service sees them.
    pub fn render(
        &self,
        text: &str,
        port: impl Fn(&PortSpec) -> u16,
        data: impl Fn(&DataMount) -> String,
    ) -> String {
        let mut out = text.to_string();
        for p in &self.ports {
            out = out.replace(&format!("{{port:{}}}", p.name), &port(p).to_string());
        }
        for d in &self.data {
            out = out.replace(&format!("{{data:{}}}", d.volume), &data(d));
        }
        out
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

/// Something a runtime created, for cleanup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    /// `service`, `container`, `network`, `volume`, `directory`.
    pub kind: String,
    pub name: String,
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
}

impl RuntimeError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            what: what.into(),
            source,
        }
    }
}

impl dive_error::Classify for RuntimeError {
    /// Whether trying again later can help (daemon hiccups, a service still starting).
    fn is_retryable(&self) -> bool {
        !matches!(self, RuntimeError::Invalid(_))
    }
}

#[async_trait]
pub trait Runtime: Send + Sync {
    fn kind(&self) -> RuntimeKind;
    /// Breaker key for calls into this runtime (e.g. the Docker daemon).
    fn breaker_key(&self) -> Option<String> {
        None
    }
    /// Where an instance's files live on this machine (local runtime only).
    fn instance_dir(&self, _instance: &str) -> Option<std::path::PathBuf> {
        None
    }
    /// The private network of an instance (and the shared federation network).
    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError>;
    /// Persistent data for `instance`: a directory or a volume.
    async fn ensure_data(&self, instance: &str, volume: &str) -> Result<(), RuntimeError>;
    /// Makes `spec` run and be healthy; idempotent.
    async fn ensure_service(&self, spec: &ServiceSpec) -> Result<Ensured, RuntimeError>;
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
    /// Removes one resource listed by [`Runtime::managed`].
    async fn remove_resource(&self, resource: &Resource) -> Result<(), RuntimeError>;
}

/// The runtime of a run, as phases find it in the engine's services.
#[derive(Clone)]
pub struct RuntimeHandle(pub Arc<dyn Runtime>);

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
