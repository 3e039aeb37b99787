//! `instance.register` run by the engine (precheck, output, rollback) and the `country-code`
//! parameter type, against a real PostgreSQL.

mod common;

use dive_engine::{Engine, EngineError, PhaseState, RunOptions, RunState, Store, Workflow};
use dive_instances::{Instances, NO_HUB, normalize_code};
use dive_pgcluster::{Cluster, StopMode};
use dive_phases::instance::register_param_types;
use dive_phases::{Config, Services};
use dive_runtime::{RuntimeConfig, RuntimeKind};
use dive_secrets::{KeySource, MasterKey};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// A cluster under the target tmp dir, wiped and started on first use in this process.
fn cluster() -> &'static Cluster {
    static DB: OnceLock<Cluster> = OnceLock::new();
    DB.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("instance-register-pg");
        let cluster = Cluster::new(&root);
        let _ = cluster.stop(StopMode::Immediate);
        let _ = std::fs::remove_dir_all(&root);
        cluster.ensure_running().expect("test cluster starts");
        cluster
    })
}

/// A fresh, migrated database for one test.
async fn fresh(name: &str) -> Store {
    let db = format!("instances_{name}");
    let cluster = cluster();
    cluster.create_database(&db).expect("test database");
    common::open_store(&cluster.url(&db).expect("url")).await
}

fn registry(store: &Store) -> Instances {
    Instances::with_port_base(store.pool().clone(), 20000).unwrap()
}

#[test]
fn country_code_is_a_parameter_type() {
    register_param_types();
    let wf = Workflow::parse(
        "codes.yaml",
        r#"
name: codes
params:
  code: { type: country-code }
phases:
  - id: n
    type: noop
"#,
    )
    .unwrap();
    let plan = wf
        .plan(&BTreeMap::from([("code".into(), "fra".into())]))
        .unwrap();
    assert_eq!(plan.params["code"], "FRA");
    let e = wf
        .plan(&BTreeMap::from([("code".into(), "xyz".into())]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`XYZ` is not an ISO 3166-1 alpha-3 country code"),
        "{e}"
    );
    assert_eq!(normalize_code("gBr").unwrap(), "GBR");
}

async fn engine(store: &Store, home: &std::path::Path) -> Engine {
    let key = MasterKey::from_bytes([7; 32], KeySource::Env);
    let config = Config::new(
        RuntimeKind::LOCAL,
        RuntimeConfig::new(home, home.join("cache")),
        key,
    );
    let services = Services::build(config, store.pool()).await.unwrap();
    Engine::new(store.clone()).with_services(Arc::new(services))
}

fn deploy_plan(role: &str, code: &str, fail: bool) -> dive_engine::Plan {
    register_param_types();
    let yaml = format!(
        r#"
name: deploy-{role}
lock: "instance:${{params.code}}"
params:
  code: {{ type: country-code }}
phases:
  - id: register
    type: instance.register
    code: ${{params.code}}
    role: {role}
  - id: next
    type: exec
    after: [register]
    command: ["sh", "-c", "echo ${{phases.register.output.ports.keycloak}}; {}"]
    retry: {{ max_attempts: 1 }}
"#,
        if fail { "exit 1" } else { "true" }
    );
    Workflow::parse("deploy.yaml", &yaml)
        .unwrap()
        .plan(&BTreeMap::from([("code".into(), code.into())]))
        .unwrap()
}

#[tokio::test]
async fn the_register_phase_prechecks_registers_and_rolls_back() {
    let store = fresh("phase").await;
    let home = tempfile::tempdir().unwrap();
    let engine = engine(&store, home.path()).await;
    let reg = registry(&store);
    let runs = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM runs")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };

    // A spoke before any hub: refused before anything is written.
    let e = engine
        .start(&deploy_plan("spoke", "fra", false), &RunOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, EngineError::Precheck(_)), "{e:?}");
    assert!(e.is_invalid_input());
    assert!(e.to_string().contains(NO_HUB), "{e}");
    assert_eq!(runs().await, 0);

    // The hub registers; its output carries the ports.
    let outcome = engine
        .start(&deploy_plan("hub", "usa", false), &RunOptions::default())
        .await
        .unwrap();
    assert_eq!(outcome.state, RunState::Succeeded, "{:?}", outcome.error);
    let run = store.load_run(outcome.run_id).await.unwrap();
    let out = run.phases[0].output.clone().unwrap();
    assert_eq!(out["code"], "USA");
    assert_eq!(out["code_lower"], "usa");
    assert_eq!(out["role"], "hub");
    assert_eq!(out["runtime"], "local");
    assert_eq!(out["realm"], "dive-usa");
    assert_eq!(out["ports"]["postgres"], 20000);
    assert_eq!(out["ports"]["keycloak"], 20001);
    assert_eq!(out["ports"]["management"], 20002);
    assert_eq!(out["keycloak_url"], "https://127.0.0.1:20001");
    assert_eq!(out["created"], true);
    let next = run.phases.iter().find(|p| p.id == "next").unwrap();
    assert_eq!(next.output.as_ref().unwrap()["stdout"], "20001");

    // A second hub, or the hub's code as a spoke: refused by the precheck.
    let e = engine
        .start(&deploy_plan("hub", "GBR", false), &RunOptions::default())
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("hub USA is already registered"),
        "{e}"
    );
    let e = engine
        .start(&deploy_plan("spoke", "USA", false), &RunOptions::default())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("registered as a hub, not as a spoke"),
        "{e}"
    );

    // A failing spoke deploy rolls its new registration back.
    let outcome = engine
        .start(&deploy_plan("spoke", "FRA", true), &RunOptions::default())
        .await
        .unwrap();
    assert_eq!(outcome.state, RunState::RolledBack, "{:?}", outcome.error);
    let run = store.load_run(outcome.run_id).await.unwrap();
    assert_eq!(run.phases[0].state, PhaseState::Compensated);
    assert!(reg.get("FRA").await.unwrap().is_none());

    // A failing re-deploy of a registered hub leaves the registration alone.
    let outcome = engine
        .start(&deploy_plan("hub", "USA", true), &RunOptions::default())
        .await
        .unwrap();
    assert_eq!(outcome.state, RunState::RolledBack);
    let run = store.load_run(outcome.run_id).await.unwrap();
    assert_eq!(run.phases[0].output.as_ref().unwrap()["created"], false);
    assert_eq!(reg.get("USA").await.unwrap().unwrap().port_block, 0);
    assert_eq!(reg.list().await.unwrap().len(), 1);
}
