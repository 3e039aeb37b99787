//! `service`: ensures a service runs on the run's runtime (local processes or Docker), from a
//! generic spec or a built-in template (`template: postgres`).
//!
//! Idempotency: ensure semantics — an identical running service is left alone (output
//! `ensured: unchanged`), a changed spec is recreated, a stopped one started; readiness is
//! checked every time. Compensation: removes the service if this run created it (output
//! `ensured: created`) — a service found running is left alone — and its data only with
//! `remove_data: true`.

use crate::late::Late;
use dive_engine::{Phase, PhaseContext, PhaseError, async_trait, typetag};
use dive_runtime::{
    DataMount, Health, InitSpec, PortSpec, Runtime, RuntimeHandle, RuntimeKind, ServiceSpec,
};
use dive_secrets::SecretStore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Image of the PostgreSQL template on Docker (built by `scripts/images build`).
pub const POSTGRES_IMAGE: &str = "dive-offline/postgres:15";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    Postgres,
    Keycloak,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub instance: String,
    pub name: String,
    #[serde(default)]
    pub template: Option<Template>,
    /// Templates: the host port (Keycloak: HTTP), and the secret holding the superuser
    /// (Keycloak: bootstrap admin) password.
    #[serde(default)]
    pub port: Option<Late<u16>>,
    #[serde(default)]
    pub password_secret: Option<String>,
    /// Template `keycloak`: the management (health) port, and its database: the PostgreSQL
    /// port on 127.0.0.1 (local runtime) and the secret of the `keycloak` role's password.
    #[serde(default)]
    pub management_port: Option<Late<u16>>,
    #[serde(default)]
    pub db_port: Option<Late<u16>>,
    #[serde(default)]
    pub db_password_secret: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment variable -> secret name; values are read from the secret store.
    #[serde(default)]
    pub secret_env: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub data: Vec<DataMount>,
    #[serde(default)]
    pub health: Option<Health>,
    #[serde(default, with = "humantime_serde")]
    pub ready_timeout: Option<Duration>,
    #[serde(default)]
    pub run_as: Option<String>,
    #[serde(default)]
    pub networks: Vec<String>,
    /// Compensation removes the data volumes too.
    #[serde(default)]
    pub remove_data: bool,
}

/// The run's runtime, or a fatal error naming what is missing.
pub fn runtime(ctx: &PhaseContext) -> Result<Arc<dyn Runtime>, PhaseError> {
    ctx.services
        .get::<RuntimeHandle>()
        .map(|h| h.0.clone())
        .ok_or_else(|| PhaseError::fatal("no runtime configured for this run"))
}

/// The secret store, or a fatal error.
pub fn secrets(ctx: &PhaseContext) -> Result<Arc<SecretStore>, PhaseError> {
    ctx.services
        .get::<SecretStore>()
        .ok_or_else(|| PhaseError::fatal("no secret store configured for this run"))
}

/// Reads a secret that must exist.
pub async fn secret_value(store: &SecretStore, name: &str) -> Result<String, PhaseError> {
    match store.get(name).await {
        Ok(Some((value, _))) => Ok(value.expose().to_string()),
        Ok(None) => Err(PhaseError::fatal(format!(
            "secret `{name}` does not exist (add a secret.ensure phase before this one)"
        ))),
        Err(e) => Err(e.into()),
    }
}

impl Service {
    fn code(&self) -> String {
        self.instance.to_ascii_lowercase()
    }

    async fn spec(&self, ctx: &PhaseContext, rt: &dyn Runtime) -> Result<ServiceSpec, PhaseError> {
        let kind = rt.kind();
        let store = secrets(ctx)?;
        let mut secret_env = BTreeMap::new();
        for (var, name) in &self.secret_env {
            secret_env.insert(var.clone(), secret_value(&store, name).await?);
        }
        let mut spec = ServiceSpec {
            instance: self.code(),
            name: self.name.clone(),
            image: self.image.clone().unwrap_or_default(),
            command: self.command.clone(),
            env: self.env.clone(),
            secret_env,
            ports: self.ports.clone(),
            data: self.data.clone(),
            health: self.health.clone(),
            ready_timeout: self.ready_timeout.unwrap_or(Duration::from_secs(120)),
            run_as: self.run_as.clone(),
            init: None,
            networks: self.networks.clone(),
        };
        match self.template {
            None => {
                if spec.image.is_empty() && kind == RuntimeKind::Docker {
                    return Err(PhaseError::fatal(
                        "`image` is required on the docker runtime",
                    ));
                }
                if spec.command.is_empty() && kind == RuntimeKind::Local {
                    return Err(PhaseError::fatal(
                        "`command` is required on the local runtime",
                    ));
                }
            }
            Some(Template::Postgres) => {
                let port = need(&self.port, "postgres", "port")?;
                let password = self
                    .secret(&store, &self.password_secret, "postgres", "password_secret")
                    .await?;
                postgres_template(&mut spec, kind, port, password)?;
            }
            Some(Template::Keycloak) => {
                let ports = (
                    need(&self.port, "keycloak", "port")?,
                    need(&self.management_port, "keycloak", "management_port")?,
                );
                let admin = self
                    .secret(&store, &self.password_secret, "keycloak", "password_secret")
                    .await?;
                let db = self
                    .secret(
                        &store,
                        &self.db_password_secret,
                        "keycloak",
                        "db_password_secret",
                    )
                    .await?;
                let db_port = match kind {
                    RuntimeKind::Local => need(&self.db_port, "keycloak", "db_port")?,
                    RuntimeKind::Docker => 5432,
                };
                keycloak_template(&mut spec, rt, ports, db_port, admin, db).await?;
            }
        }
        Ok(spec)
    }

    /// Keycloak is ready when its admin API issues a token — not when its port opens or its
    /// health endpoint answers (the system we replace failed exactly there).
    async fn wait_for_admin_api(
        &self,
        ctx: &PhaseContext,
        spec: &ServiceSpec,
    ) -> Result<(), PhaseError> {
        let url = format!(
            "http://127.0.0.1:{}",
            spec.host_port("http").unwrap_or_default()
        );
        ctx.note(format!(
            "waiting for the admin API at {url} to issue a token"
        ));
        let password = self
            .secret(
                &*secrets(ctx)?,
                &self.password_secret,
                "keycloak",
                "password_secret",
            )
            .await?;
        let took = dive_keycloak::wait_for_admin_token(
            &url,
            dive_keycloak::ADMIN_USER,
            &password,
            spec.ready_timeout,
        )
        .await
        .map_err(PhaseError::from)?;
        tracing::info!(instance = %spec.instance, ?took, "keycloak admin API ready");
        Ok(())
    }

    async fn secret(
        &self,
        store: &SecretStore,
        field: &Option<String>,
        template: &str,
        name: &str,
    ) -> Result<String, PhaseError> {
        let secret = field
            .as_deref()
            .ok_or_else(|| PhaseError::fatal(format!("template {template} needs `{name}`")))?;
        secret_value(store, secret).await
    }
}

/// A required template field.
fn need(field: &Option<Late<u16>>, template: &str, name: &str) -> Result<u16, PhaseError> {
    field
        .as_ref()
        .ok_or_else(|| PhaseError::fatal(format!("template {template} needs `{name}`")))?
        .get(name)
}

/// Keycloak image on Docker: `DIVE_KEYCLOAK_IMAGE`, else the official one (tests use the
/// offline image built by `scripts/images build`).
pub fn keycloak_image() -> String {
    std::env::var("DIVE_KEYCLOAK_IMAGE")
        .ok()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| {
            format!(
                "quay.io/keycloak/keycloak:{}",
                dive_runtime::keycloak_dist::version()
            )
        })
}

/// Fills in a Keycloak server for PostgreSQL: the built distribution from the cache locally
/// (started `--optimized`), the configured image on Docker. Health is the management port's
/// `/health/ready`; the admin token check comes after it.
async fn keycloak_template(
    spec: &mut ServiceSpec,
    rt: &dyn Runtime,
    (http, management): (u16, u16),
    db_port: u16,
    admin_password: String,
    db_password: String,
) -> Result<(), PhaseError> {
    spec.ports = vec![
        PortSpec {
            name: "http".into(),
            container: 8080,
            host: http,
        },
        PortSpec {
            name: "management".into(),
            container: 9000,
            host: management,
        },
    ];
    let kind = rt.kind();
    let db_host = match kind {
        RuntimeKind::Local => "127.0.0.1",
        RuntimeKind::Docker => "postgres",
    };
    spec.env.extend([
        (
            "KC_DB_URL".to_string(),
            format!("jdbc:postgresql://{db_host}:{db_port}/keycloak"),
        ),
        ("KC_DB_USERNAME".to_string(), "keycloak".to_string()),
        (
            "KC_BOOTSTRAP_ADMIN_USERNAME".to_string(),
            "admin".to_string(),
        ),
        // Tokens and front-channel URLs name the address a browser on this machine uses;
        // calls that reach Keycloak another way (a partner over `dive-federation`) get
        // back-channel URLs for the address they used.
        (
            "KC_HOSTNAME".to_string(),
            format!("http://127.0.0.1:{http}"),
        ),
        (
            "KC_HOSTNAME_BACKCHANNEL_DYNAMIC".to_string(),
            "true".to_string(),
        ),
        ("KC_HTTP_ENABLED".to_string(), "true".to_string()),
        (
            "JAVA_OPTS_KC_HEAP".to_string(),
            "-Xms64m -Xmx768m".to_string(),
        ),
    ]);
    spec.secret_env.insert("KC_DB_PASSWORD".into(), db_password);
    spec.secret_env
        .insert("KC_BOOTSTRAP_ADMIN_PASSWORD".into(), admin_password);
    spec.health = Some(Health::Http {
        port: "management".into(),
        path: "/health/ready".into(),
    });
    if spec.ready_timeout < Duration::from_secs(300) {
        spec.ready_timeout = Duration::from_secs(300);
    }
    match kind {
        RuntimeKind::Local => {
            let dir = rt
                .instance_dir(&spec.instance)
                .ok_or_else(|| PhaseError::fatal("the local runtime has no instance directory"))?;
            let dist = dive_runtime::keycloak_dist::instance_copy(&dir).await?;
            spec.command = vec![
                dist.join("bin/kc.sh").display().to_string(),
                "start".into(),
                "--optimized".into(),
                "--http-host=127.0.0.1".into(),
                "--http-port={port:http}".into(),
                "--http-management-port={port:management}".into(),
            ];
        }
        RuntimeKind::Docker => {
            if spec.image.is_empty() {
                spec.image = keycloak_image();
            }
            let mut command = vec!["start".to_string()];
            command.extend(
                dive_runtime::keycloak_dist::BUILD_OPTIONS
                    .iter()
                    .map(|o| o.to_string()),
            );
            spec.command = command;
            spec.networks.push("dive-federation".into());
        }
    }
    Ok(())
}

/// Fills in a PostgreSQL 15 server: initdb + postgres from the machine's binaries locally
/// (password auth, its own data directory and port), the offline image on Docker.
fn postgres_template(
    spec: &mut ServiceSpec,
    kind: RuntimeKind,
    port: u16,
    password: String,
) -> Result<(), PhaseError> {
    spec.ports = vec![PortSpec {
        name: "postgres".into(),
        container: 5432,
        host: port,
    }];
    spec.data = vec![DataMount {
        volume: "pgdata".into(),
        target: "/var/lib/postgresql/data".into(),
    }];
    match kind {
        RuntimeKind::Local => {
            let bin =
                dive_pgcluster::find_bin_dir().map_err(|e| PhaseError::fatal(e.to_string()))?;
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
            spec.health = Some(Health::Command {
                command: vec![
                    tool("pg_isready"),
                    "-q".into(),
                    "-h".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    "{port:postgres}".into(),
                    "-U".into(),
                    "postgres".into(),
                ],
            });
        }
        RuntimeKind::Docker => {
            if spec.image.is_empty() {
                spec.image = POSTGRES_IMAGE.into();
            }
            spec.env
                .insert("PGDATA".into(), "/var/lib/postgresql/data/pgdata".into());
            spec.secret_env.insert("POSTGRES_PASSWORD".into(), password);
            spec.health = Some(Health::Command {
                command: vec![
                    "pg_isready".into(),
                    "-q".into(),
                    "-h".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    "5432".into(),
                    "-U".into(),
                    "postgres".into(),
                ],
            });
        }
    }
    Ok(())
}

#[typetag::serde(name = "service")]
#[async_trait]
impl Phase for Service {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let rt = runtime(ctx)?;
        let spec = self.spec(ctx, &*rt).await?;
        ctx.note(match &spec.health {
            Some(Health::Http { port, path }) => format!(
                "starting {} on {}; waiting for http://127.0.0.1:{}{path} (up to {})",
                spec.name,
                rt.kind(),
                spec.host_port(port).unwrap_or_default(),
                humantime::format_duration(spec.ready_timeout)
            ),
            _ => format!(
                "starting {} on {}; waiting until it is ready",
                spec.name,
                rt.kind()
            ),
        });
        let ensured = rt.ensure_service(&spec).await?;
        if self.template == Some(Template::Keycloak) {
            self.wait_for_admin_api(ctx, &spec).await?;
        }
        let ports: BTreeMap<&str, u16> = spec
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.host))
            .collect();
        Ok(json!({
            "instance": spec.instance,
            "name": spec.name,
            "runtime": rt.kind().to_string(),
            "ensured": ensured,
            "ports": ports,
        }))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, output: &Value) -> Result<(), PhaseError> {
        // Only what this run created is undone: a failed re-run of a deployed instance must not
        // take down the service it found running.
        if output.get("ensured").and_then(Value::as_str) != Some("created") {
            return Ok(());
        }
        let rt = runtime(ctx)?;
        let mut volumes: Vec<String> = self.data.iter().map(|d| d.volume.clone()).collect();
        if self.template == Some(Template::Postgres) {
            volumes.push("pgdata".into());
        }
        let data = if self.remove_data {
            volumes
        } else {
            Vec::new()
        };
        rt.remove(&self.code(), &self.name, &data).await?;
        Ok(())
    }
}
