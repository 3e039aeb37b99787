//! `service`: ensures a service runs on the run's runtime (local processes or Docker), from a
//! generic spec or a built-in template (`template: postgres`).
//!
//! Idempotency: ensure semantics — an identical running service is left alone (output
//! `ensured: unchanged`), a changed spec is recreated, a stopped one started; readiness is
//! checked every time. Compensation: removes the service if this run created it (output
//! `ensured: created`) — a service found running is left alone — and its data only with
//! `remove_data: true`.

use crate::context::Services;
use crate::late::Late;
use dive_engine::dry_run::is_known_after_apply;
use dive_engine::{
    Action, Change, KNOWN_AFTER_APPLY, Phase, PhaseContext, PhaseError, PhasePlan, async_trait,
    typetag,
};
use dive_runtime::{
    DataMount, Ensured, Health, KeycloakTls, PortSpec, Runtime, ServiceFile, ServiceSpec,
    keycloak_template, postgres_template,
};
use dive_secrets::SecretStore;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

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
    /// Template `keycloak`: the management (health) port, and its database: the host port of
    /// the instance's PostgreSQL (the runtime decides how Keycloak reaches it) and the secret of
    /// the `keycloak` role's password.
    #[serde(default)]
    pub management_port: Option<Late<u16>>,
    #[serde(default)]
    pub db_port: Option<Late<u16>>,
    #[serde(default)]
    pub db_password_secret: Option<String>,
    /// Template `keycloak`: the secret holding its certificate and key (a `tls.certificate`
    /// phase makes it); it serves HTTPS only.
    #[serde(default)]
    pub tls_secret: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// File name -> secret name: the service reads the secret from the file `{file:NAME}` (in
    /// `command` and `env`), never from its environment.
    #[serde(default)]
    pub secret_files: BTreeMap<String, String>,
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
        let services = Services::of(ctx)?;
        let store = services.secrets();
        let mut files = BTreeMap::new();
        for (file, name) in &self.secret_files {
            dive_runtime::check_file_name(file)?;
            files.insert(
                file.clone(),
                ServiceFile::new(secret_value(store, name).await?),
            );
        }
        let mut spec = ServiceSpec {
            instance: self.code(),
            name: self.name.clone(),
            image: self.image.clone().unwrap_or_default(),
            command: self.command.clone(),
            env: self.env.clone(),
            files,
            ports: self.ports.clone(),
            data: self.data.clone(),
            health: self.health.clone(),
            ready_timeout: self.ready_timeout.unwrap_or(Duration::from_secs(120)),
            run_as: self.run_as.clone(),
            init: None,
            networks: self.networks.clone(),
        };
        match self.template {
            None => rt.check_spec(&spec)?,
            Some(Template::Postgres) => {
                let port = need(&self.port, "postgres", "port")?;
                let password = self
                    .secret(store, &self.password_secret, "postgres", "password_secret")
                    .await?;
                postgres_template(rt, &mut spec, port, password).await?;
            }
            Some(Template::Keycloak) => {
                let ports = (
                    need(&self.port, "keycloak", "port")?,
                    need(&self.management_port, "keycloak", "management_port")?,
                );
                let admin = self
                    .secret(store, &self.password_secret, "keycloak", "password_secret")
                    .await?;
                let db = self
                    .secret(
                        store,
                        &self.db_password_secret,
                        "keycloak",
                        "db_password_secret",
                    )
                    .await?;
                let db_port = need(&self.db_port, "keycloak", "db_port")?;
                let bundle = self
                    .secret(store, &self.tls_secret, "keycloak", "tls_secret")
                    .await?;
                let cert = dive_tls::Certificate::from_pem(&bundle).map_err(|e| {
                    PhaseError::fatal(format!(
                        "secret `{}`: {e}",
                        self.tls_secret.as_deref().unwrap_or_default()
                    ))
                })?;
                let tls = KeycloakTls {
                    cert_pem: cert.cert_pem().to_string(),
                    key_pem: cert.key_pem().to_string(),
                    ca_pem: services.authority().cert_pem().to_string(),
                };
                keycloak_template(rt, &mut spec, ports, db_port, (admin, db), tls).await?;
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
            "https://127.0.0.1:{}",
            spec.host_port("https").unwrap_or_default()
        );
        ctx.note(format!(
            "waiting for the admin API at {url} to issue a token"
        ));
        let password = self
            .secret(
                Services::of(ctx)?.secrets(),
                &self.password_secret,
                "keycloak",
                "password_secret",
            )
            .await?;
        let took = dive_keycloak::wait_for_admin_token(
            Services::of(ctx)?.trust(),
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

    /// Whether the spec needs what the run decides before this phase: a port only known after
    /// apply, or a secret that does not exist yet.
    async fn waits_on_run(&self, ctx: &PhaseContext) -> Result<bool, PhaseError> {
        let unknown =
            |f: &Option<Late<u16>>| matches!(f, Some(Late::Text(t)) if is_known_after_apply(t));
        if [&self.port, &self.management_port, &self.db_port]
            .into_iter()
            .any(unknown)
        {
            return Ok(true);
        }
        let store = Services::of(ctx)?.secrets();
        let secrets = [
            &self.password_secret,
            &self.db_password_secret,
            &self.tls_secret,
        ]
        .into_iter()
        .flatten()
        .chain(self.secret_files.values());
        for name in secrets {
            if is_known_after_apply(name) || store.get(name).await?.is_none() {
                return Ok(true);
            }
        }
        Ok(false)
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

#[typetag::serde(name = "service")]
#[async_trait]
impl Phase for Service {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let rt = Services::of(ctx)?.runtime().clone();
        let spec = self.spec(ctx, &*rt).await?;
        ctx.note(match &spec.health {
            Some(Health::Http { port, path, tls }) => format!(
                "starting {} on {}; waiting for {}://127.0.0.1:{}{path} (up to {})",
                spec.name,
                if *tls { "https" } else { "http" },
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

    /// What the runtime would do with the spec ([`Runtime::plan_service`]): nothing, start it,
    /// recreate it (its configuration changed), or create it. A spec that needs what the run
    /// decides first (a new instance's ports, secrets it generates) is planned from whether the
    /// service exists.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let rt = Services::of(ctx)?.runtime().clone();
        let object = format!("service {} ({})", self.name, rt.kind());
        let change = |action| Change::new(Some(&self.instance), object.clone(), action);
        let output = |ensured: Value, ports: Value| {
            json!({ "instance": self.code(), "name": self.name, "runtime": rt.kind().to_string(),
                    "ensured": ensured, "ports": ports })
        };
        if self.waits_on_run(ctx).await? {
            let exists = rt.status(&self.code(), &self.name).await?.state
                != dive_runtime::ServiceState::Missing;
            let action = if exists {
                Action::KnownAfterApply
            } else {
                Action::Create
            };
            return Ok(PhasePlan::changes(
                vec![change(action).because("its configuration uses what this run makes first")],
                output(KNOWN_AFTER_APPLY.into(), KNOWN_AFTER_APPLY.into()),
            ));
        }
        let spec = self.spec(ctx, &*rt).await?;
        let ensured = rt.plan_service(&spec).await?;
        let ports: BTreeMap<&str, u16> = spec
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.host))
            .collect();
        let changes = match ensured {
            Ensured::Unchanged => vec![],
            Ensured::Started => vec![change(Action::Start)],
            Ensured::Created => vec![change(Action::Create).diff(
                &Value::Null,
                &json!({ "image": spec.image, "ports": ports }),
            )],
            Ensured::Recreated => vec![change(Action::Update).because(
                "its configuration (image, command, environment, files or ports) differs from \
                 the running one: it would be recreated",
            )],
        };
        Ok(PhasePlan::changes(
            changes,
            output(json!(ensured), json!(ports)),
        ))
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
        let rt = Services::of(ctx)?.runtime().clone();
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
