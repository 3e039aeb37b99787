//! `secret.ensure` run by the engine: its output never holds the value, a second run reuses the
//! secret, and its fields are checked when the workflow is parsed.

mod common;

use dive_engine::{Engine, PhaseState, RunOptions, RunState, Store, Workflow};
use dive_pgcluster::{Cluster, StopMode};
use dive_phases::{Config, Services};
use dive_runtime::{RuntimeConfig, RuntimeKind};
use dive_secrets::{KeySource, MasterKey, SecretStore};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::OnceLock;

struct Db {
    cluster: Cluster,
}

/// A cluster under the target tmp dir, wiped and started on first use in this process.
fn cluster() -> &'static Cluster {
    static DB: OnceLock<Db> = OnceLock::new();
    &DB.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("secret-ensure-pg");
        let cluster = Cluster::new(&root);
        let _ = cluster.stop(StopMode::Immediate);
        let _ = std::fs::remove_dir_all(&root);
        cluster.ensure_running().expect("test cluster starts");
        Db { cluster }
    })
    .cluster
}

/// A fresh, migrated database for one test.
async fn fresh(name: &str) -> (Store, String) {
    let db = format!("secrets_{name}");
    let cluster = cluster();
    cluster.create_database(&db).expect("test database");
    let url = cluster.url(&db).expect("url");
    (common::open_store(&url).await, db)
}

fn key(byte: u8) -> MasterKey {
    MasterKey::from_bytes([byte; 32], KeySource::Env)
}

fn store(s: &Store, key: MasterKey) -> SecretStore {
    SecretStore::new(s.pool().clone(), key)
}

fn plan(yaml: &str) -> dive_engine::Plan {
    dive_phases::register();
    Workflow::parse("secrets.yaml", yaml)
        .unwrap()
        .plan(&BTreeMap::new())
        .unwrap()
}

#[tokio::test]
async fn secret_ensure_runs_in_a_workflow_and_outputs_no_value() {
    let (db, _) = fresh("workflow").await;
    let yaml = r#"
name: secrets
lock: "secrets-test"
phases:
  - id: admin
    type: secret.ensure
    name: usa/keycloak/admin-password
  - id: client
    type: secret.ensure
    name: federation/usa/fra/client-secret
    length: 48
    alphabet: base64url
  - id: after
    type: noop
    after: [admin]
    output: { version: "${phases.admin.output.version}" }
"#;
    let home = tempfile::tempdir().unwrap();
    let config = Config::new(
        RuntimeKind::LOCAL,
        RuntimeConfig::new(home.path(), home.path().join("cache")),
        key(9),
    );
    let services = Services::build(config, db.pool()).await.unwrap();
    let engine = Engine::new(db.clone()).with_services(Arc::new(services));
    let secrets = store(&db, key(9));

    let mut values = Vec::new();
    for round in 0..2 {
        let outcome = engine
            .start(&plan(yaml), &RunOptions::default())
            .await
            .unwrap();
        assert_eq!(outcome.state, RunState::Succeeded, "{:?}", outcome.error);
        let run = db.load_run(outcome.run_id).await.unwrap();
        let output = |id: &str| {
            run.phases
                .iter()
                .find(|p| p.id == id)
                .and_then(|p| p.output.clone())
                .unwrap()
        };
        assert_eq!(
            output("admin"),
            serde_json::json!({
                "name": "usa/keycloak/admin-password",
                "version": 1,
                "created": round == 0,
            })
        );
        assert_eq!(output("client")["name"], "federation/usa/fra/client-secret");
        let (admin, _) = secrets
            .get("usa/keycloak/admin-password")
            .await
            .unwrap()
            .unwrap();
        let (client, _) = secrets
            .get("federation/usa/fra/client-secret")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((admin.len(), client.len()), (32, 48));
        let everything = serde_json::to_string(&run).unwrap();
        let stored_plan = serde_json::to_string(&run.plan).unwrap();
        for v in [&admin, &client] {
            assert!(!everything.contains(v.expose()));
            assert!(!stored_plan.contains(v.expose()));
        }
        values.push((admin.expose().to_string(), client.expose().to_string()));
    }
    assert_eq!(values[0], values[1], "the second run reused the secrets");

    // Without dive's services the phase fails at once, saying why.
    let bare = Engine::new(db.clone());
    let outcome = bare
        .start(&plan(yaml), &RunOptions::default())
        .await
        .unwrap();
    assert_ne!(outcome.state, RunState::Succeeded);
    let run = db.load_run(outcome.run_id).await.unwrap();
    let admin = run.phases.iter().find(|p| p.id == "admin").unwrap();
    assert_eq!(admin.state, PhaseState::Failed);
    assert_eq!(admin.attempts, 1);
    assert!(
        admin
            .error
            .as_deref()
            .unwrap()
            .contains("this engine was built without them"),
        "{:?}",
        admin.error
    );
}

#[test]
fn secret_ensure_fields_are_checked_when_the_workflow_is_parsed() {
    dive_phases::register();
    let bad = |extra: &str| {
        let yaml =
            format!("name: s\nphases:\n  - id: a\n    type: secret.ensure\n    name: x\n{extra}");
        Workflow::parse("s.yaml", &yaml).unwrap_err().to_string()
    };
    assert!(bad("    value: hunter2\n").contains("unknown field `value`"));
    assert!(bad("    alphabet: emoji\n").contains(
        "alphabet `emoji` is not one of alphanumeric, lowercase, hex, base64url, digits"
    ));
    assert!(bad("    length: -3\n").contains("expected usize"));
    assert!(bad("    length: 4\n").contains("length 4 is out of range"));
    let ok = "name: s\nphases:\n  - id: a\n    type: secret.ensure\n    name: x\n";
    Workflow::parse("s.yaml", ok).unwrap();
}
