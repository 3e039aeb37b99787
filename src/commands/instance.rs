//! `dive hub …` and `dive spoke …`: deploy, up, down and reset (built-in workflows: `hub-deploy`
//! or `spoke-deploy`, `instance-down`, `instance-reset`) and status of one instance. Codes are
//! checked (ISO 3166-1 alpha-3, any case) before anything happens.

use crate::cli::{ExecArgs, HubCode, InstanceCommand, SpokeCode};
use crate::commands::cleanup::confirm;
use crate::commands::print_json;
use crate::commands::run::{report_unfinished, run_named, start_named};
use crate::commands::secrets::Access;
use crate::{InvalidInput, config, database, exit, services};
use anyhow::Result;
use clap::Args;
use dive_engine::Store;
use dive_engine::store::RunRecord;
use dive_instances::health::{ServiceHealth, service_health};
use dive_instances::{
    InstanceError, InstanceRecord, Instances, NO_HUB, Ports, Role, country_name, normalize_code,
};
use dive_runtime::RuntimeKind;
use dive_tls::Trust;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::IsTerminal;

/// The hub's code when none is given and no hub is registered.
const DEFAULT_HUB: &str = "USA";

enum Action {
    Deploy {
        no_rollback: bool,
        exec: ExecArgs,
    },
    Up {
        no_rollback: bool,
        exec: ExecArgs,
    },
    Down {
        json: bool,
    },
    Status {
        json: bool,
    },
    Reset {
        yes: bool,
        json: bool,
        runtime: Option<RuntimeKind>,
    },
}

impl Action {
    fn verb(&self) -> &'static str {
        match self {
            Action::Deploy { .. } => "deploy",
            Action::Up { .. } => "up",
            Action::Down { .. } => "down",
            Action::Status { .. } => "status",
            Action::Reset { .. } => "reset",
        }
    }
}

fn split<C: Args>(cmd: InstanceCommand<C>) -> (C, Action) {
    match cmd {
        InstanceCommand::Deploy {
            code,
            no_rollback,
            exec,
        } => (code, Action::Deploy { no_rollback, exec }),
        InstanceCommand::Up {
            code,
            no_rollback,
            exec,
        } => (code, Action::Up { no_rollback, exec }),
        InstanceCommand::Down { code, json } => (code, Action::Down { json }),
        InstanceCommand::Status { code, json } => (code, Action::Status { json }),
        InstanceCommand::Reset {
            code,
            yes,
            json,
            runtime,
        } => (code, Action::Reset { yes, json, runtime }),
    }
}

pub async fn hub(cmd: InstanceCommand<HubCode>) -> Result<u8> {
    let (code, action) = split(cmd);
    instance(Role::Hub, code.code, action).await
}

pub async fn spoke(cmd: InstanceCommand<SpokeCode>) -> Result<u8> {
    let (code, action) = split(cmd);
    match (code.code, action) {
        (Some(code), action) => instance(Role::Spoke, Some(code), action).await,
        (None, Action::Status { json }) => every_spoke(json).await,
        (None, action) => Err(InvalidInput(format!(
            "which spoke? e.g. `dive spoke {} FRA`",
            action.verb()
        ))
        .into()),
    }
}

/// `dive spoke status` without a code: every registered spoke.
async fn every_spoke(json: bool) -> Result<u8> {
    let store = database::open().await?;
    let access = Access::open(&store).await?;
    let mut views = Vec::new();
    for rec in config::get().instances(&store).list().await? {
        if rec.role == Role::Spoke {
            views.push(status_view(Role::Spoke, &rec.code, Some(&rec), &access).await);
        }
    }
    if json {
        print_json(&views)?;
    } else if views.is_empty() {
        println!("no spoke is deployed (dive spoke deploy CODE)");
    } else {
        views.iter().for_each(|v| print!("{}", status_text(v)));
    }
    Ok(exit::OK)
}

/// Operator errors become exit code 2.
fn classify(e: InstanceError) -> anyhow::Error {
    if e.is_invalid_input() {
        InvalidInput(e.to_string()).into()
    } else {
        e.into()
    }
}

/// How to address an instance of `role` on the command line.
fn cli_name(role: Role, verb: &str, code: &str) -> String {
    match role {
        Role::Hub if code == DEFAULT_HUB => format!("dive hub {verb}"),
        Role::Hub => format!("dive hub {verb} --code {code}"),
        Role::Spoke => format!("dive spoke {verb} {code}"),
    }
}

async fn instance(role: Role, code: Option<String>, action: Action) -> Result<u8> {
    // Checked before anything happens: the code, and whether a reset could be confirmed.
    let given = code
        .map(|c| normalize_code(&c).map_err(InvalidInput))
        .transpose()?;
    if let Action::Reset { yes: false, .. } = action
        && !std::io::stdin().is_terminal()
    {
        return Err(InvalidInput(
            "reset removes the instance's services, data, secrets and registration: add --yes to \
             confirm (there is no terminal to ask on)"
                .into(),
        )
        .into());
    }
    let dry_run =
        matches!(&action, Action::Deploy { exec, .. } | Action::Up { exec, .. } if exec.dry_run);
    let store = database::open_for(dry_run).await?;
    let registry = config::get().instances(&store);
    let code = match given {
        Some(code) => code,
        None => registry
            .hub()
            .await
            .map_err(classify)?
            .map_or_else(|| DEFAULT_HUB.to_string(), |h| h.code),
    };
    let existing = registry.get(&code).await.map_err(classify)?;
    if let Some(rec) = &existing
        && rec.role != role
    {
        return Err(InvalidInput(format!(
            "{code} is registered as a {}, not as a {role}: use `{}`",
            rec.role,
            cli_name(rec.role, action.verb(), &code)
        ))
        .into());
    }
    match action {
        Action::Deploy { no_rollback, exec } => {
            deploy(&registry, role, &code, existing, no_rollback, exec, false).await
        }
        Action::Up { no_rollback, exec } => {
            deploy(&registry, role, &code, existing, no_rollback, exec, true).await
        }
        Action::Status { json } => {
            let access = Access::open(&store).await?;
            print_status(
                &status_view(role, &code, existing.as_ref(), &access).await,
                json,
            )?;
            Ok(exit::OK)
        }
        Action::Down { json } => down(role, &code, existing, &store, json).await,
        Action::Reset { yes, json, runtime } => {
            reset(&registry, role, &code, existing, yes, json, runtime).await
        }
    }
}

async fn deploy(
    registry: &Instances,
    role: Role,
    code: &str,
    existing: Option<InstanceRecord>,
    no_rollback: bool,
    mut exec: ExecArgs,
    up: bool,
) -> Result<u8> {
    if up && existing.is_none() {
        return Err(InvalidInput(format!(
            "{code} is not deployed: run `{}` first",
            cli_name(role, "deploy", code)
        ))
        .into());
    }
    match role {
        Role::Spoke => {
            if registry.hub().await.map_err(classify)?.is_none() {
                return Err(InvalidInput(NO_HUB.into()).into());
            }
        }
        Role::Hub => {
            if let Some(hub) = registry.hub().await.map_err(classify)?
                && hub.code != code
            {
                return Err(InvalidInput(format!(
                    "hub {} is already deployed and there is at most one hub (reset it first: \
                     `{}`)",
                    hub.code,
                    cli_name(Role::Hub, "reset", &hub.code)
                ))
                .into());
            }
        }
    }
    if let Some(rec) = &existing {
        match exec.runtime {
            None => exec.runtime = Some(rec.runtime),
            Some(kind) if kind != rec.runtime => {
                return Err(InvalidInput(format!(
                    "{code} is deployed on the {} runtime, not on {kind}: drop --runtime (or \
                     DIVE_RUNTIME), or reset it first",
                    rec.runtime
                ))
                .into());
            }
            Some(_) => {}
        }
    }
    let workflow = match role {
        Role::Hub => "hub-deploy",
        Role::Spoke => "spoke-deploy",
    };
    let params = BTreeMap::from([("code".to_string(), code.to_string())]);
    run_named(workflow, &params, no_rollback, &exec).await
}

#[derive(Debug, Serialize)]
pub(crate) struct StatusView {
    code: String,
    country: &'static str,
    role: Role,
    runtime: Option<RuntimeKind>,
    /// `running`, `stopped`, `partial`, `not deployed`, or `unknown` (runtime unreachable).
    state: &'static str,
    keycloak_url: Option<String>,
    realm: String,
    ports: Option<Ports>,
    services: Vec<ServiceHealth>,
    /// Keycloak's certificate: the names it is valid for and when it expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<CertificateView>,
}

#[derive(Debug, Serialize)]
pub(crate) struct CertificateView {
    names: Vec<String>,
    not_after: chrono::DateTime<chrono::Utc>,
    /// Days until it expires (a `tls.certificate` phase of a deploy renews it when less than a
    /// third of its lifetime is left).
    days_left: i64,
}

/// Each service of `rec` with its state and health, as its runtime reports them.
pub(crate) async fn services_of(rec: &InstanceRecord, trust: &Trust) -> Vec<ServiceHealth> {
    let rt = services::runtime(rec.runtime)
        .await
        .map_err(|e| format!("{e:#}"));
    service_health(rt.as_deref().map_err(String::as_str), trust, rec).await
}

pub(crate) async fn status_view(
    role: Role,
    code: &str,
    rec: Option<&InstanceRecord>,
    access: &Access,
) -> StatusView {
    let country = country_name(code).unwrap_or("unknown");
    let Some(rec) = rec else {
        return StatusView {
            code: code.into(),
            country,
            role,
            runtime: None,
            state: "not deployed",
            keycloak_url: None,
            realm: format!("dive-{}", code.to_ascii_lowercase()),
            ports: None,
            services: Vec::new(),
            certificate: None,
        };
    };
    let services = services_of(rec, &access.trust).await;
    let certificate = dive_phases::tls::certificate(&access.secrets, &rec.code)
        .await
        .ok()
        .flatten()
        .map(|(cert, _)| CertificateView {
            names: cert.names().to_vec(),
            not_after: cert.not_after(),
            days_left: (cert.not_after() - chrono::Utc::now()).num_days(),
        });
    let running = services.iter().filter(|s| s.state == "running").count();
    let state = if services.iter().any(|s| s.state == "unknown") {
        "unknown"
    } else if running == services.len() {
        "running"
    } else if running == 0 {
        "stopped"
    } else {
        "partial"
    };
    StatusView {
        code: rec.code.clone(),
        country,
        role: rec.role,
        runtime: Some(rec.runtime),
        state,
        keycloak_url: Some(rec.keycloak_url()),
        realm: rec.realm(),
        ports: Some(rec.ports()),
        services,
        certificate,
    }
}

fn print_status(view: &StatusView, json: bool) -> Result<()> {
    if json {
        return print_json(view);
    }
    print!("{}", status_text(view));
    Ok(())
}

/// An instance's status as lines of text.
pub(crate) fn status_text(view: &StatusView) -> String {
    let mut out = format!(
        "{} ({}) {}: {}",
        view.code, view.country, view.role, view.state
    );
    if let Some(rt) = view.runtime {
        out += &format!(" on the {rt} runtime");
    }
    out.push('\n');
    if let (Some(url), Some(ports)) = (&view.keycloak_url, &view.ports) {
        out += &format!(
            "  keycloak {url}  realm {}  management port {}  postgres port {}\n",
            view.realm, ports.management, ports.postgres
        );
    }
    if let Some(c) = &view.certificate {
        out += &format!(
            "  certificate for {}  expires {} ({} days left)\n",
            c.names.join(", "),
            c.not_after.format("%Y-%m-%d"),
            c.days_left
        );
    }
    for s in &view.services {
        out += &format!("  {:<10} {:<8} {}", s.name, s.state, s.health);
        if let Some(e) = &s.error {
            out += &format!("  ({e})");
        }
        out.push('\n');
    }
    out
}

/// How reset and down run their workflow: on the instance's runtime, progress on stderr, the
/// command printing its own result. Without rollback: nothing they do can be undone, and a run
/// that fails part-way stays `failed`, so `dive resume` finishes it.
async fn run_instance_workflow(
    workflow: &str,
    code: &str,
    kind: RuntimeKind,
) -> Result<Option<RunRecord>> {
    let exec = ExecArgs {
        json: false,
        concurrency: 1,
        runtime: Some(kind),
        dry_run: false,
    };
    let params = BTreeMap::from([("code".to_string(), code.to_string())]);
    let (engine, outcome) = start_named(workflow, &params, true, &exec).await?;
    if !report_unfinished(workflow, &outcome) {
        return Ok(None);
    }
    Ok(Some(engine.store().load_run(outcome.run_id).await?))
}

/// The output of phase `id` of a finished run.
fn output<'r>(run: &'r RunRecord, id: &str) -> &'r Value {
    run.phases
        .iter()
        .find(|p| p.id == id)
        .and_then(|p| p.output.as_ref())
        .unwrap_or(&Value::Null)
}

/// The strings of an output's array field.
fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Stops the instance's services: the `instance-down` workflow on its runtime.
async fn down(
    role: Role,
    code: &str,
    existing: Option<InstanceRecord>,
    store: &Store,
    json: bool,
) -> Result<u8> {
    let Some(rec) = existing else {
        return Err(InvalidInput(format!(
            "{code} is not deployed: there is nothing to stop (`{}` deploys it)",
            cli_name(role, "deploy", code)
        ))
        .into());
    };
    let Some(run) = run_instance_workflow("instance-down", code, rec.runtime).await? else {
        return Ok(exit::RUN_FAILED);
    };
    for name in strings(&output(&run, "stop")["stopped"]) {
        note!("stopped {name}");
    }
    let access = Access::open(store).await?;
    print_status(&status_view(role, code, Some(&rec), &access).await, json)?;
    Ok(exit::OK)
}

#[derive(Debug, Serialize)]
struct ResetView {
    code: String,
    role: Role,
    runtime: Option<RuntimeKind>,
    /// Whether a registration (and so a port block) was removed.
    unregistered: bool,
    port_block: Option<u32>,
    services: Vec<String>,
    resources: Vec<String>,
    secrets: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
async fn reset(
    registry: &Instances,
    role: Role,
    code: &str,
    existing: Option<InstanceRecord>,
    yes: bool,
    json: bool,
    runtime: Option<RuntimeKind>,
) -> Result<u8> {
    let kind = existing
        .as_ref()
        .map(|r| r.runtime)
        .or(runtime)
        .unwrap_or_default();
    let lower = code.to_ascii_lowercase();
    let mut summary = format!(
        "reset {code} ({}): removes its services with their data on the {kind} runtime, its \
         secrets ({lower}/…)",
        country_name(code).unwrap_or("unknown")
    );
    match &existing {
        Some(rec) => summary += &format!(" and its registration (port block {})", rec.port_block),
        None => summary += "; it is not registered",
    }
    note!("{summary}");
    if role == Role::Hub && existing.is_some() {
        let spokes: Vec<String> = registry
            .list()
            .await
            .map_err(classify)?
            .into_iter()
            .filter(|r| r.role == Role::Spoke)
            .map(|r| r.code)
            .collect();
        if !spokes.is_empty() {
            note!(
                "warning: spokes {} stay registered and lose their hub until it is deployed again",
                spokes.join(", ")
            );
        }
    }
    if !yes && !confirm(&format!("remove {code}?"))? {
        note!("nothing removed");
        return Ok(exit::OK);
    }
    // Services and data, leftovers, secrets, then the registration (see instance-reset.yaml).
    let Some(run) = run_instance_workflow("instance-reset", code, kind).await? else {
        return Ok(exit::RUN_FAILED);
    };
    let removed = output(&run, "remove");
    let unregister = output(&run, "unregister");
    let view = ResetView {
        code: code.to_string(),
        role,
        runtime: Some(kind),
        unregistered: unregister["unregistered"].as_bool().unwrap_or(false),
        port_block: unregister["port_block"]
            .as_u64()
            .and_then(|b| u32::try_from(b).ok()),
        services: strings(&removed["services"]),
        resources: strings(&removed["resources"]),
        secrets: strings(&output(&run, "secrets")["deleted"]),
    };
    if json {
        print_json(&view)?;
    } else {
        note!(
            "{code} reset: {} services, {} other resources, {} secrets removed{}",
            view.services.len(),
            view.resources.len(),
            view.secrets.len(),
            if view.unregistered {
                ", registration and port block released"
            } else {
                ""
            }
        );
    }
    Ok(exit::OK)
}
