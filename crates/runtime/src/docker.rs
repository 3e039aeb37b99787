//! The Docker runtime (bollard): networks `dive-<code>` and `dive-federation`, volumes
//! `dive-<code>-<volume>`, containers `dive-<code>-<service>`, all labelled
//! `dive.managed=true`; ports published on 127.0.0.1 only. A container's `dive.spec` label
//! holds its spec digest, so an identical running container is left alone and a changed one is
//! recreated.

use crate::health::{http_check, tcp_ok, wait_ready};
use crate::{
    Builtin, Ensured, Health, Resource, ResourceKind, Runtime, RuntimeConfig, RuntimeEntry,
    RuntimeError, RuntimeKind, ServiceFile, ServiceSpec, ServiceState, ServiceStatus, check_name,
    keycloak_dist::{BUILD_OPTIONS, START_OPTIONS},
    templates::{POSTGRES_IMAGE, pg_isready},
};
use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::exec::StartExecResults;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, ExecConfig, HostConfig, Mount, MountType,
    NetworkConnectRequest, NetworkCreateRequest, NetworkingConfig, PortBinding,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use dive_tls::Trust;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;

const MANAGED: &str = "dive.managed";
const INSTANCE: &str = "dive.instance";
/// The network every instance's Keycloak joins, so partners reach each other by container name.
pub const FEDERATION_NETWORK: &str = "dive-federation";
/// Where a container finds its [`ServiceSpec::files`]: a directory only the image's user reads,
/// filled before the container first starts (so nothing of it is in `docker inspect`).
pub const FILES_DIR: &str = "/run/dive";

/// The Docker runtime in [`crate::RUNTIMES`]: instances reach each other by container name on
/// `dive-federation`, and a service its siblings by service name on `dive-<code>`.
pub const ENTRY: RuntimeEntry = RuntimeEntry {
    name: "docker",
    connect: |config| {
        Box::pin(async move {
            Ok(Arc::new(DockerRuntime::connect().await?.configured(&config)) as Arc<dyn Runtime>)
        })
    },
    peer_addr: |instance, service, port| (container_name(instance, service), port.container),
    sibling_addr: |_, service, port| (service.to_string(), port.container),
};

pub struct DockerRuntime {
    docker: Docker,
    /// The image Keycloak services run.
    keycloak_image: String,
    /// The dive CA, for HTTPS health checks.
    trust: Option<Trust>,
}

impl crate::sealed::Sealed for DockerRuntime {}

/// A tar archive of `files` under [`FILES_DIR`], owned by `uid:gid`, readable by them only.
fn files_archive(
    files: &std::collections::BTreeMap<String, ServiceFile>,
    uid: u64,
    gid: u64,
) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(size);
        h.set_mtime(0);
        h
    };
    let dir = FILES_DIR.trim_start_matches('/');
    let mut h = header(tar::EntryType::Directory, 0o700, 0);
    tar.append_data(&mut h, format!("{dir}/"), std::io::empty())?;
    for (name, file) in files {
        let text = file.text();
        let mut h = header(tar::EntryType::Regular, 0o600, text.len() as u64);
        tar.append_data(&mut h, format!("{dir}/{name}"), text.as_bytes())?;
    }
    tar.into_inner()
}

/// The official Keycloak image of `version` (users with a registry; tests use the offline one).
fn official_keycloak_image(version: &str) -> String {
    format!("quay.io/keycloak/keycloak:{version}")
}

pub fn container_name(instance: &str, name: &str) -> String {
    format!("dive-{instance}-{name}")
}

pub fn volume_name(instance: &str, volume: &str) -> String {
    format!("dive-{instance}-{volume}")
}

fn not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn labels(instance: Option<&str>, service: Option<&str>) -> HashMap<String, String> {
    let mut l = HashMap::from([(MANAGED.to_string(), "true".to_string())]);
    if let Some(i) = instance {
        l.insert(INSTANCE.into(), i.to_string());
    }
    if let Some(s) = service {
        l.insert("dive.service".into(), s.to_string());
    }
    l
}

fn managed_filter() -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("{MANAGED}=true")])])
}

/// Where dive processes on this machine serialise the creation of Docker networks.
fn network_lock_path() -> std::path::PathBuf {
    std::env::temp_dir().join("dive-docker-networks.lock")
}

/// Holds the machine-wide network lock until dropped (an `flock`, so a process that dies
/// releases it; two holders in one process exclude each other too).
async fn network_lock() -> Result<std::fs::File, RuntimeError> {
    let path = network_lock_path();
    tokio::task::spawn_blocking(move || {
        use fs4::fs_std::FileExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            // Created by another user: reading is enough to lock it.
            .or_else(|_| std::fs::File::open(&path))
            .map_err(|e| RuntimeError::io(format!("opening {}", path.display()), e))?;
        file.lock_exclusive()
            .map_err(|e| RuntimeError::io(format!("locking {}", path.display()), e))?;
        Ok(file)
    })
    .await
    .map_err(|e| RuntimeError::Unavailable(format!("network lock task: {e}")))?
}

impl DockerRuntime {
    /// Connects to the local daemon and agrees on an API version with it.
    pub async fn connect() -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| RuntimeError::Unavailable(format!("cannot reach the Docker daemon: {e}")))?
            .negotiate_version()
            .await
            .map_err(|e| {
                RuntimeError::Unavailable(format!(
                    "cannot reach the Docker daemon ({e}); is dockerd running?"
                ))
            })?;
        Ok(DockerRuntime {
            docker,
            keycloak_image: official_keycloak_image(crate::keycloak_dist::KEYCLOAK_VERSION),
            trust: None,
        })
    }

    /// Uses the configured Keycloak image (by default the official one of the configured
    /// version).
    pub fn configured(mut self, config: &RuntimeConfig) -> Self {
        self.keycloak_image = config
            .keycloak_image
            .clone()
            .unwrap_or_else(|| official_keycloak_image(&config.keycloak.version));
        self.trust = config.trust.clone();
        self
    }

    /// Whether network `name` exists; two of that name is an error naming the way out.
    async fn network_exists(&self, name: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_network(name, None).await {
            Ok(_) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(DockerError::DockerResponseServerError {
                status_code: 400,
                message,
            }) if message.contains("ambiguous") => Err(RuntimeError::Invalid(format!(
                "more than one Docker network is named `{name}` ({message}); containers on \
                 different ones cannot reach each other: remove the extra ones \
                 (`docker network ls --filter name={name}`, `docker network rm ID`)"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    fn render(&self, spec: &ServiceSpec, text: &str) -> String {
        spec.render(
            text,
            |p| p.container,
            |d| d.target.clone(),
            |f| format!("{FILES_DIR}/{f}"),
        )
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => {
                let pulled = self
                    .docker
                    .create_image(
                        Some(
                            bollard::query_parameters::CreateImageOptionsBuilder::new()
                                .from_image(image)
                                .build(),
                        ),
                        None,
                        None,
                    )
                    .collect::<Vec<_>>()
                    .await
                    .into_iter()
                    .find_map(Result::err);
                match pulled {
                    None => Ok(()),
                    Some(pull_error) => Err(RuntimeError::Invalid(format!(
                        "image `{image}` is not available locally and cannot be pulled ({pull_error}); \
                         build the offline images with `scripts/images build`"
                    ))),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn create(&self, spec: &ServiceSpec) -> Result<(), RuntimeError> {
        let network = format!("dive-{}", spec.instance);
        self.ensure_network(&network).await?;
        for n in &spec.networks {
            self.ensure_network(n).await?;
        }
        for d in &spec.data {
            self.ensure_data(&spec.instance, &d.volume).await?;
        }
        let mut port_bindings = HashMap::new();
        for p in &spec.ports {
            port_bindings.insert(
                format!("{}/tcp", p.container),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some(p.host.to_string()),
                }]),
            );
        }
        let env: Vec<String> = spec
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", self.render(spec, v)))
            .collect();
        let mut container_labels = labels(Some(&spec.instance), Some(&spec.name));
        container_labels.insert("dive.spec".into(), spec.digest());
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty())
                .then(|| spec.command.iter().map(|a| self.render(spec, a)).collect()),
            env: Some(env),
            labels: Some(container_labels),
            exposed_ports: Some(
                spec.ports
                    .iter()
                    .map(|p| format!("{}/tcp", p.container))
                    .collect(),
            ),
            host_config: Some(HostConfig {
                port_bindings: Some(port_bindings),
                mounts: Some(
                    spec.data
                        .iter()
                        .map(|d| Mount {
                            target: Some(d.target.clone()),
                            source: Some(volume_name(&spec.instance, &d.volume)),
                            typ: Some(MountType::VOLUME),
                            ..Default::default()
                        })
                        .collect(),
                ),
                network_mode: Some(network.clone()),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network,
                    EndpointSettings {
                        aliases: Some(vec![spec.name.clone()]),
                        ..Default::default()
                    },
                )])),
            }),
            ..Default::default()
        };
        let name = container_name(&spec.instance, &spec.name);
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await?;
        for n in &spec.networks {
            self.docker
                .connect_network(
                    n,
                    NetworkConnectRequest {
                        container: name.clone(),
                        endpoint_config: Some(EndpointSettings {
                            aliases: Some(vec![name.clone()]),
                            ..Default::default()
                        }),
                    },
                )
                .await?;
        }
        self.upload_files(spec, &name, false).await?;
        self.docker.start_container(&name, None).await?;
        Ok(())
    }

    /// The numeric user (and group) the image runs as: its files are given to it.
    async fn image_user(&self, image: &str) -> Result<(u64, u64), RuntimeError> {
        let user = self
            .docker
            .inspect_image(image)
            .await?
            .config
            .and_then(|c| c.user)
            .unwrap_or_default();
        let (uid, gid) = user.split_once(':').unwrap_or((&user, ""));
        let number = |s: &str| (!s.is_empty()).then(|| s.parse::<u64>()).transpose();
        match (number(uid), number(gid)) {
            (Ok(uid), Ok(gid)) => Ok((uid.unwrap_or(0), gid.unwrap_or(0))),
            _ => Err(RuntimeError::Invalid(format!(
                "image `{image}` runs as user `{user}`: dive gives a container its secret files \
                 by numeric uid, so the image's USER must be numeric (uid or uid:gid)"
            ))),
        }
    }

    /// Puts `spec.files` into the container under [`FILES_DIR`] (the directory 0700 and the
    /// files 0600, owned by the image's user): all of them into a created container before it
    /// first starts, or only the live ones (`live_only`) into one that runs or starts again —
    /// those whose content changed ([`ServiceFile::is_in`]), each replaced whole.
    async fn upload_files(
        &self,
        spec: &ServiceSpec,
        container: &str,
        live_only: bool,
    ) -> Result<(), RuntimeError> {
        let mut files: std::collections::BTreeMap<String, ServiceFile> = spec
            .files
            .iter()
            .filter(|(_, f)| f.live || !live_only)
            .map(|(n, f)| (n.clone(), f.clone()))
            .collect();
        if live_only && !files.is_empty() {
            let present = self.files_in(container).await?;
            files.retain(|n, f| !present.get(n).is_some_and(|old| f.is_in(old)));
        }
        if files.is_empty() {
            return Ok(());
        }
        let (uid, gid) = self.image_user(&spec.image).await?;
        let archive = files_archive(&files, uid, gid)
            .map_err(|e| RuntimeError::io(format!("packing the files of {container}"), e))?;
        self.docker
            .upload_to_container(
                container,
                Some(UploadToContainerOptionsBuilder::new().path("/").build()),
                bollard::body_full(archive.into()),
            )
            .await?;
        Ok(())
    }

    /// The files under [`FILES_DIR`] of `container` (running or not), by name: none when it
    /// has no such directory.
    async fn files_in(&self, container: &str) -> Result<HashMap<String, Vec<u8>>, RuntimeError> {
        let options = DownloadFromContainerOptionsBuilder::new()
            .path(FILES_DIR)
            .build();
        let mut stream = self
            .docker
            .download_from_container(container, Some(options));
        let mut archive = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => archive.extend_from_slice(&bytes),
                Err(e) if not_found(&e) => return Ok(HashMap::new()),
                Err(e) => return Err(e.into()),
            }
        }
        let io = |e| RuntimeError::io(format!("reading the files of {container}"), e);
        let mut files = HashMap::new();
        let mut tar = tar::Archive::new(archive.as_slice());
        for entry in tar.entries().map_err(io)? {
            let mut entry = entry.map_err(io)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = entry
                .path()
                .map_err(io)?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
            let mut content = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut content).map_err(io)?;
            if let Some(name) = name {
                files.insert(name, content);
            }
        }
        Ok(files)
    }

    async fn exec_ok(&self, container: &str, command: Vec<String>) -> Result<(), String> {
        let exec = self
            .docker
            .create_exec(
                container,
                ExecConfig {
                    cmd: Some(command),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(|e| e.to_string())?
        {
            while output.next().await.is_some() {}
        }
        match self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(|e| e.to_string())?
            .exit_code
        {
            Some(0) => Ok(()),
            code => Err(format!("health command exited with {code:?}")),
        }
    }

    async fn check_health(&self, spec: &ServiceSpec) -> Result<(), String> {
        let port = |name: &str| {
            spec.host_port(name)
                .ok_or_else(|| format!("health check names unknown port `{name}`"))
        };
        match &spec.health {
            None => Ok(()),
            Some(Health::Http { port: p, path, tls }) => {
                http_check(port(p)?, path, *tls, self.trust.as_ref()).await
            }
            Some(Health::Tcp { port: p }) => tcp_ok(port(p)?).await,
            Some(Health::Command { command }) => {
                let argv = command.iter().map(|a| self.render(spec, a)).collect();
                self.exec_ok(&container_name(&spec.instance, &spec.name), argv)
                    .await
            }
        }
    }

    async fn running(&self, container: &str) -> Result<(), String> {
        match self.docker.inspect_container(container, None).await {
            Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => Ok(()),
            Ok(_) => Err(format!(
                "container exited; last log lines:\n{}",
                self.tail(container, 15).await
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn tail(&self, container: &str, lines: usize) -> String {
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        self.docker
            .logs(container, Some(opts))
            .filter_map(|r| async move { r.ok().map(|o| o.to_string()) })
            .collect::<Vec<_>>()
            .await
            .concat()
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::DOCKER
    }

    /// PostgreSQL from the offline image, Keycloak from the configured one (joining
    /// `dive-federation`); both with their health checks inside the container.
    async fn builtin(&self, spec: &mut ServiceSpec, which: Builtin) -> Result<(), RuntimeError> {
        match which {
            Builtin::Postgres { password } => {
                if spec.image.is_empty() {
                    spec.image = POSTGRES_IMAGE.into();
                }
                spec.env
                    .insert("PGDATA".into(), "/var/lib/postgresql/data/pgdata".into());
                // Read by the image's entrypoint when it initialises the data only.
                spec.files.insert(
                    "postgres-password".into(),
                    ServiceFile::bootstrap(format!("{password}\n")),
                );
                spec.env.insert(
                    "POSTGRES_PASSWORD_FILE".into(),
                    "{file:postgres-password}".into(),
                );
                spec.health = Some(pg_isready("pg_isready".into(), "5432".into()));
            }
            Builtin::Keycloak => {
                if spec.image.is_empty() {
                    spec.image = self.keycloak_image.clone();
                }
                let mut command = vec!["start".to_string()];
                command.extend(
                    BUILD_OPTIONS
                        .iter()
                        .chain(&START_OPTIONS)
                        .map(|o| o.to_string()),
                );
                spec.command = command;
                spec.networks.push(FEDERATION_NETWORK.into());
            }
        }
        Ok(())
    }

    fn check_spec(&self, spec: &ServiceSpec) -> Result<(), RuntimeError> {
        if spec.image.is_empty() {
            return Err(RuntimeError::Invalid(
                "`image` is required on the docker runtime".into(),
            ));
        }
        Ok(())
    }

    fn breaker_key(&self) -> Option<String> {
        Some("docker".into())
    }

    async fn ensure_network(&self, name: &str) -> Result<(), RuntimeError> {
        check_name("network", name)?;
        if self.network_exists(name).await? {
            return Ok(());
        }
        // Engines before API 1.44 create a second network of the same name when two creates
        // race (two instances deployed side by side both ensuring `dive-federation`), and every
        // later lookup by name is then ambiguous. Creation is serialised on this machine; a
        // network that appeared while we waited is taken as it is.
        let _lock = network_lock().await?;
        if self.network_exists(name).await? {
            return Ok(());
        }
        let instance = name.strip_prefix("dive-").filter(|s| *s != "federation");
        let created = self
            .docker
            .create_network(NetworkCreateRequest {
                name: name.to_string(),
                driver: Some("bridge".into()),
                labels: Some(labels(instance, None)),
                ..Default::default()
            })
            .await;
        match created {
            // Engines from API 1.44 refuse a duplicate: another machine's dive created it.
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            other => other.map(|_| ()).map_err(Into::into),
        }
    }

    async fn ensure_data(&self, instance: &str, volume: &str) -> Result<(), RuntimeError> {
        check_name("instance", instance)?;
        check_name("volume", volume)?;
        let name = volume_name(instance, volume);
        match self.docker.inspect_volume(&name).await {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => {
                self.docker
                    .create_volume(VolumeCreateRequest {
                        name: Some(name),
                        labels: Some(labels(Some(instance), None)),
                        ..Default::default()
                    })
                    .await?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn plan_service(&self, spec: &ServiceSpec) -> Result<Ensured, RuntimeError> {
        check_name("instance", &spec.instance)?;
        check_name("service", &spec.name)?;
        let name = container_name(&spec.instance, &spec.name);
        match self.docker.inspect_container(&name, None).await {
            Err(e) if not_found(&e) => Ok(Ensured::Created),
            Err(e) => Err(e.into()),
            Ok(existing) => {
                let same = existing
                    .config
                    .as_ref()
                    .and_then(|c| c.labels.as_ref())
                    .and_then(|l| l.get("dive.spec"))
                    == Some(&spec.digest());
                let running = existing.state.as_ref().and_then(|s| s.running) == Some(true);
                Ok(Ensured::decide(Some(same), running))
            }
        }
    }

    async fn ensure_service(&self, spec: &ServiceSpec) -> Result<Ensured, RuntimeError> {
        let outcome = self.plan_service(spec).await?;
        self.ensure_image(&spec.image).await?;
        let name = container_name(&spec.instance, &spec.name);
        match outcome {
            Ensured::Created => self.create(spec).await?,
            Ensured::Unchanged => self.upload_files(spec, &name, true).await?,
            Ensured::Started => {
                self.upload_files(spec, &name, true).await?;
                self.docker.start_container(&name, None).await?;
            }
            Ensured::Recreated => {
                self.docker
                    .remove_container(
                        &name,
                        Some(RemoveContainerOptionsBuilder::new().force(true).build()),
                    )
                    .await?;
                self.create(spec).await?;
            }
        }
        let took = wait_ready(
            &spec.name,
            spec.ready_timeout,
            || self.check_health(spec),
            || self.running(&name),
        )
        .await?;
        tracing::info!(instance = %spec.instance, service = %spec.name, ?outcome, ?took, "container ready");
        Ok(outcome)
    }

    async fn stop(&self, instance: &str, name: &str) -> Result<(), RuntimeError> {
        let opts = StopContainerOptionsBuilder::new().t(15).build();
        match self
            .docker
            .stop_container(&container_name(instance, name), Some(opts))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn remove(
        &self,
        instance: &str,
        name: &str,
        data: &[String],
    ) -> Result<(), RuntimeError> {
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        match self
            .docker
            .remove_container(&container_name(instance, name), Some(opts))
            .await
        {
            Ok(()) => {}
            Err(e) if not_found(&e) => {}
            Err(e) => return Err(e.into()),
        }
        for volume in data {
            match self
                .docker
                .remove_volume(
                    &volume_name(instance, volume),
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await
            {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn status(&self, instance: &str, name: &str) -> Result<ServiceStatus, RuntimeError> {
        let (state, health) = match self
            .docker
            .inspect_container(&container_name(instance, name), None)
            .await
        {
            Err(e) if not_found(&e) => (ServiceState::Missing, "unknown".to_string()),
            Err(e) => return Err(e.into()),
            Ok(c) => {
                let running = c.state.as_ref().and_then(|s| s.running) == Some(true);
                (
                    if running {
                        ServiceState::Running
                    } else {
                        ServiceState::Stopped
                    },
                    "unknown".to_string(),
                )
            }
        };
        Ok(ServiceStatus {
            name: name.to_string(),
            state,
            health,
        })
    }

    async fn logs_tail(
        &self,
        instance: &str,
        name: &str,
        lines: usize,
    ) -> Result<String, RuntimeError> {
        Ok(self.tail(&container_name(instance, name), lines).await)
    }

    async fn managed(&self) -> Result<Vec<Resource>, RuntimeError> {
        let filters = managed_filter();
        let mut found = Vec::new();
        let containers = self
            .docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        for c in containers {
            if let Some(name) = c.names.and_then(|n| n.into_iter().next()) {
                found.push(Resource {
                    kind: ResourceKind::Container,
                    name: name.trim_start_matches('/').to_string(),
                    instance: c.labels.and_then(|mut l| l.remove(INSTANCE)),
                });
            }
        }
        let volumes = self
            .docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::new().filters(&filters).build(),
            ))
            .await?;
        for mut v in volumes.volumes.unwrap_or_default() {
            found.push(Resource {
                kind: ResourceKind::Volume,
                instance: v.labels.remove(INSTANCE),
                name: v.name,
            });
        }
        let networks = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::new().filters(&filters).build(),
            ))
            .await?;
        for n in networks {
            if let Some(name) = n.name {
                found.push(Resource {
                    kind: ResourceKind::Network,
                    instance: n.labels.and_then(|mut l| l.remove(INSTANCE)),
                    name,
                });
            }
        }
        Ok(found)
    }

    async fn remove_resource(&self, resource: &Resource) -> Result<(), RuntimeError> {
        let result = match resource.kind {
            ResourceKind::Container => {
                let opts = RemoveContainerOptionsBuilder::new().force(true).build();
                self.docker
                    .remove_container(&resource.name, Some(opts))
                    .await
            }
            ResourceKind::Volume => {
                self.docker
                    .remove_volume(
                        &resource.name,
                        None::<bollard::query_parameters::RemoveVolumeOptions>,
                    )
                    .await
            }
            ResourceKind::Network => self.docker.remove_network(&resource.name).await,
            other => {
                return Err(RuntimeError::Invalid(format!(
                    "the docker runtime has no {other} resources"
                )));
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
