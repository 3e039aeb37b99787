//! The `keycloak.*` phases and the admin client against a real Keycloak 26 (the locally built
//! `dive-offline/keycloak` image on Docker, with its own PostgreSQL), run through the engine
//! from a YAML workflow with a real secret store.
//!
//! One Keycloak serves the whole file (it takes ~40 s to start), on the private instance code
//! `XKC` (ISO 3166 user-assigned range, never a real instance): containers `dive-xkc-*`,
//! network `dive-xkc`, volume `dive-xkc-pgdata`. Leftovers of an earlier run are removed first,
//! and everything is removed at the end, also when an assertion fails.

mod common;

use dive_engine::{Engine, PhaseState, RunOptions, RunState, Store, Workflow};
use dive_error::Classify;
use dive_keycloak::{
    DIVE_ATTRIBUTES, KeycloakAdmin, KeycloakError, admin_password_secret, login_claims, test_users,
    user_password_secret, wait_for_admin_token,
};
use dive_pgcluster::{Cluster, StopMode};
use dive_phases::keycloak::CLEARANCES;
use dive_phases::{Config, Services};
use dive_runtime::docker::DockerRuntime;
use dive_runtime::{DataMount, Health, PortSpec, Runtime, ServiceFile, ServiceSpec};
use dive_runtime::{RuntimeConfig, RuntimeKind};
use dive_secrets::{Alphabet, KeySource, MasterKey, SecretStore};
use futures::FutureExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Private instance code of this test (lower case in names).
const CODE: &str = "xkc";
const KEYCLOAK_IMAGE: &str = "dive-offline/keycloak:26.5.5";
const POSTGRES_IMAGE: &str = "dive-offline/postgres:15";

fn master_key() -> MasterKey {
    MasterKey::from_bytes([42; 32], KeySource::Env)
}

/// A free port on 127.0.0.1 (asked from the kernel, then released for the container).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Removes every Docker resource of the test instance: containers, then volumes, then its
/// network. Only `dive.managed=true` resources are listed, so nothing else is touched.
async fn remove_stack(rt: &DockerRuntime) {
    let resources = rt.owned_by(CODE).await.expect("list docker resources");
    for r in resources {
        if let Err(e) = rt.remove_resource(&r).await {
            eprintln!("cleanup: could not remove {} {}: {e}", r.kind, r.name);
        }
    }
}

struct Stack {
    url: String,
    trust: dive_tls::Trust,
    admin_password: String,
    /// Time from starting the Keycloak container to the first admin token.
    ready_after: Duration,
}

/// Starts PostgreSQL and Keycloak for the test instance; passwords come from the secret store.
async fn start_stack(rt: &DockerRuntime, secrets: &SecretStore) -> Stack {
    let db_secret = format!("{CODE}/postgres/password");
    secrets
        .ensure(&db_secret, 32, Alphabet::Alphanumeric)
        .await
        .unwrap();
    secrets
        .ensure(&admin_password_secret(CODE), 32, Alphabet::Alphanumeric)
        .await
        .unwrap();
    let secret = |name: String| async move {
        secrets
            .get(&name)
            .await
            .unwrap()
            .unwrap()
            .0
            .expose()
            .to_string()
    };
    let db_password = secret(db_secret).await;
    let admin_password = secret(admin_password_secret(CODE)).await;

    let postgres = ServiceSpec {
        instance: CODE.into(),
        name: "postgres".into(),
        image: POSTGRES_IMAGE.into(),
        command: vec![],
        env: BTreeMap::from([
            (
                "PGDATA".to_string(),
                "/var/lib/postgresql/data/pgdata".to_string(),
            ),
            (
                "POSTGRES_PASSWORD_FILE".to_string(),
                "{file:pw}".to_string(),
            ),
        ]),
        files: BTreeMap::from([(
            "pw".to_string(),
            ServiceFile::bootstrap(format!("{db_password}\n")),
        )]),
        ports: vec![],
        data: vec![DataMount {
            volume: "pgdata".into(),
            target: "/var/lib/postgresql/data".into(),
        }],
        health: Some(Health::Command {
            command: ["pg_isready", "-q", "-h", "127.0.0.1", "-U", "postgres"]
                .map(String::from)
                .to_vec(),
        }),
        ready_timeout: Duration::from_secs(90),
        run_as: None,
        init: None,
        networks: vec![],
    };
    rt.ensure_service(&postgres)
        .await
        .expect("postgres container");

    let port = free_port();
    let env = [
        ("KC_DB_URL", "jdbc:postgresql://postgres:5432/postgres"),
        ("KC_DB_USERNAME", "postgres"),
        ("KC_BOOTSTRAP_ADMIN_USERNAME", "admin"),
        ("KC_HOSTNAME_STRICT", "false"),
        ("KC_CONFIG_FILE", "{file:keycloak.conf}"),
        ("KC_HTTPS_CERTIFICATE_FILE", "{file:tls.crt}"),
        ("KC_HTTPS_CERTIFICATE_KEY_FILE", "{file:tls.key}"),
    ];
    // HTTPS with a certificate of the store's CA, which the phases' clients trust.
    let authority = dive_phases::tls::authority(secrets).await.unwrap();
    let cert = authority
        .issue(&["127.0.0.1".to_string()], dive_tls::DEFAULT_LIFETIME)
        .unwrap();
    let keycloak = ServiceSpec {
        instance: CODE.into(),
        name: "keycloak".into(),
        image: KEYCLOAK_IMAGE.into(),
        command: vec![],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        files: BTreeMap::from([
            (
                "keycloak.conf".to_string(),
                ServiceFile::new(format!(
                    "db-password={db_password}\nbootstrap-admin-password={admin_password}\n"
                )),
            ),
            ("tls.crt".to_string(), ServiceFile::new(cert.cert_pem())),
            (
                "tls.key".to_string(),
                ServiceFile::new(cert.key_pem().as_str()),
            ),
        ]),
        ports: vec![PortSpec {
            name: "https".into(),
            container: 8443,
            host: port,
        }],
        data: vec![],
        // Readiness is decided below by the admin API itself.
        health: None,
        ready_timeout: Duration::from_secs(30),
        run_as: None,
        init: None,
        networks: vec![],
    };
    let started = Instant::now();
    rt.ensure_service(&keycloak)
        .await
        .expect("keycloak container");
    let url = format!("https://127.0.0.1:{port}");
    let trust = authority.trust();
    let waited = wait_for_admin_token(
        &trust,
        &url,
        "admin",
        &admin_password,
        Duration::from_secs(240),
    )
    .await
    .unwrap_or_else(|e| panic!("Keycloak never issued an admin token: {e}"));
    let ready_after = started.elapsed();
    eprintln!(
        "keycloak: admin token after {:.1}s (polled {:.1}s)",
        ready_after.as_secs_f32(),
        waited.as_secs_f32()
    );
    Stack {
        url,
        trust,
        admin_password,
        ready_after,
    }
}

/// The deploy part of a workflow: instance (a stand-in that outputs the URL, as the real
/// instance phase does), realm, user profile, client scope, client, users; optionally a last
/// phase that fails, to trigger a rollback.
fn workflow(fail_at_end: bool) -> Workflow {
    let mut yaml = r#"
name: keycloak-admin-test
lock: "keycloak-test:${params.code}"
params:
  code: { default: "xkc" }
  url: {}
  realm: { default: "dive-xkc" }
  client: { default: "dive-verify" }
defaults:
  retry: { max_attempts: 3, initial_delay: 500ms, max_delay: 2s }
  timeout: 2m
phases:
  - id: instance
    type: noop
    output: { keycloak_url: "${params.url}" }
  - id: realm
    type: keycloak.realm
    after: [instance]
    instance: "${params.code}"
    url: "${phases.instance.output.keycloak_url}"
    realm: "${params.realm}"
  - id: profile
    type: keycloak.user-profile
    after: [realm]
    instance: "${params.code}"
    url: "${phases.instance.output.keycloak_url}"
    realm: "${params.realm}"
  - id: scope
    type: keycloak.client-scope
    after: [realm]
    instance: "${params.code}"
    url: "${phases.instance.output.keycloak_url}"
    realm: "${params.realm}"
  - id: client
    type: keycloak.client
    after: [scope]
    instance: "${params.code}"
    url: "${phases.instance.output.keycloak_url}"
    realm: "${params.realm}"
    client_id: "${params.client}"
  - id: users
    type: keycloak.users
    after: [profile, client]
    instance: "${params.code}"
    url: "${phases.instance.output.keycloak_url}"
    realm: "${params.realm}"
"#
    .to_string();
    if fail_at_end {
        yaml.push_str(
            r#"  - id: fail
    type: exec
    after: [users]
    command: ["sh", "-c", "echo deliberate failure >&2; exit 3"]
    retry: { max_attempts: 1 }
"#,
        );
    }
    Workflow::parse("keycloak-admin-test.yaml", &yaml).expect("test workflow is valid")
}

struct Harness {
    engine: Engine,
    db: Store,
    secrets: SecretStore,
    url: String,
    trust: dive_tls::Trust,
}

impl Harness {
    /// Runs a workflow; returns the run's state, its phase outputs by id, and the run record
    /// as JSON (for leak checks).
    async fn run(
        &self,
        wf: &Workflow,
        realm: &str,
        client: &str,
    ) -> (
        RunState,
        BTreeMap<String, Value>,
        dive_engine::store::RunRecord,
    ) {
        let params = BTreeMap::from([
            ("url".to_string(), self.url.clone()),
            ("realm".to_string(), realm.to_string()),
            ("client".to_string(), client.to_string()),
        ]);
        let plan = wf.plan(&params).expect("plan");
        let started = Instant::now();
        let outcome = self
            .engine
            .start(&plan, &RunOptions::default())
            .await
            .expect("run starts");
        let run = self.db.load_run(outcome.run_id).await.unwrap();
        eprintln!(
            "run of {realm}/{client}: {:?} in {:.1}s",
            outcome.state,
            started.elapsed().as_secs_f32()
        );
        let outputs = run
            .phases
            .iter()
            .filter_map(|p| Some((p.id.clone(), p.output.clone()?)))
            .collect();
        (outcome.state, outputs, run)
    }

    async fn admin(&self) -> KeycloakAdmin {
        let password = self
            .secrets
            .get(&admin_password_secret(CODE))
            .await
            .unwrap()
            .unwrap()
            .0;
        KeycloakAdmin::connect_named(
            &self.trust,
            "keycloak XKC",
            &self.url,
            "admin",
            password.expose(),
        )
        .await
        .expect("admin login")
    }

    async fn user_password(&self, username: &str) -> String {
        self.secrets
            .get(&user_password_secret(CODE, username))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no password secret for {username}"))
            .0
            .expose()
            .to_string()
    }
}

fn sorted(v: &Value) -> Vec<String> {
    let mut items: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("{v} is not an array"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    items.sort();
    items
}

#[tokio::test]
async fn keycloak_phases_against_a_real_keycloak() {
    dive_phases::register();
    let test_started = Instant::now();
    let rt = DockerRuntime::connect()
        .await
        .expect("a running Docker engine");
    remove_stack(&rt).await;

    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("keycloak-admin-pg");
    let cluster = Cluster::new(&root);
    let _ = cluster.stop(StopMode::Immediate);
    let _ = std::fs::remove_dir_all(&root);
    cluster.ensure_running().expect("state database cluster");

    let result = AssertUnwindSafe(scenario(&rt, &cluster))
        .catch_unwind()
        .await;

    remove_stack(&rt).await;
    let _ = cluster.stop(StopMode::Immediate);
    let _ = std::fs::remove_dir_all(&root);
    eprintln!(
        "keycloak test: {:.1}s in all",
        test_started.elapsed().as_secs_f32()
    );
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn scenario(rt: &DockerRuntime, cluster: &Cluster) {
    cluster.create_database("keycloak_test").unwrap();
    let db = common::open_store(&cluster.url("keycloak_test").unwrap()).await;
    let secrets = SecretStore::new(db.pool().clone(), master_key());
    let stack = start_stack(rt, &secrets).await;
    assert!(stack.ready_after < Duration::from_secs(240));

    let home = tempfile::tempdir().unwrap();
    let config = Config::new(
        RuntimeKind::LOCAL,
        RuntimeConfig::new(home.path(), home.path().join("cache")),
        master_key(),
    );
    let services = Arc::new(Services::build(config, db.pool()).await.unwrap());
    let h = Harness {
        engine: Engine::new(db.clone()).with_services(services),
        db,
        secrets,
        url: stack.url.clone(),
        trust: stack.trust.clone(),
    };

    errors_keep_keycloak_status_and_message(&h, &stack).await;
    let deploy = workflow(false);

    // First run: everything is created.
    let (state, out, _) = h.run(&deploy, "dive-xkc", "dive-verify").await;
    assert_eq!(state, RunState::Succeeded, "{out:#?}");
    assert_eq!(
        out["realm"],
        json!({"instance": "XKC", "realm": "dive-xkc", "created": true, "updated": false,
               "changed": true})
    );
    assert_eq!(out["profile"]["added"], json!(DIVE_ATTRIBUTES));
    assert_eq!(out["scope"]["created"], true);
    assert_eq!(out["scope"]["mappers_added"], json!(DIVE_ATTRIBUTES));
    assert_eq!(out["scope"]["realm_default_added"], true);
    assert_eq!(out["client"]["created"], true);
    assert_eq!(out["users"]["created"], 4);
    assert_eq!(out["users"]["password_set"], 4);
    assert_eq!(
        out["users"]["usernames"],
        json!([
            "testuser-xkc-1",
            "testuser-xkc-2",
            "testuser-xkc-3",
            "testuser-xkc-4"
        ])
    );

    check_realm(&h).await;
    check_logins(&h).await;

    // Second run: nothing to do, and every phase says so.
    let (state, out, run) = h.run(&deploy, "dive-xkc", "dive-verify").await;
    assert_eq!(state, RunState::Succeeded);
    for phase in ["realm", "profile", "scope", "client", "users"] {
        assert_eq!(out[phase]["changed"], false, "{phase}: {:#}", out[phase]);
    }
    assert_eq!(out["users"]["unchanged"], 4);
    assert_eq!(out["realm"]["created"], false);
    // No password in what the run stored.
    let stored = serde_json::to_string(&run).unwrap();
    for u in test_users(CODE) {
        assert!(!stored.contains(&h.user_password(&u.username).await));
    }
    assert!(!stored.contains(&stack.admin_password));

    drift_is_repaired(&h).await;
    rollback_removes_what_the_run_created(&h).await;
}

/// Realm, user profile, client scope and client as the design names them.
async fn check_realm(h: &Harness) {
    let admin = h.admin().await;
    let realm = admin.realm("dive-xkc").await.unwrap().expect("realm");
    assert_eq!(realm.enabled, Some(true));
    assert_eq!(realm.display_name.as_deref(), Some("DIVE XKC"));

    let profile = admin.user_profile("dive-xkc").await.unwrap();
    let attrs = profile["attributes"].as_array().unwrap();
    let attr = |name: &str| {
        attrs
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("attribute {name} missing from {profile:#}"))
    };
    for builtin in ["username", "email", "firstName", "lastName"] {
        attr(builtin);
    }
    for name in DIVE_ATTRIBUTES {
        assert_eq!(
            sorted(&attr(name)["permissions"]["edit"]),
            ["admin"],
            "{name}"
        );
    }
    assert_eq!(
        attr("clearance")["validations"]["options"]["options"],
        json!(CLEARANCES)
    );
    assert_eq!(attr("acpCOI")["multivalued"], true);

    let scope = admin
        .client_scope_by_name("dive-xkc", "dive-attributes")
        .await
        .unwrap()
        .expect("scope dive-attributes");
    assert_eq!(scope.protocol.as_deref(), Some("openid-connect"));
    assert_eq!(scope.attributes["include.in.token.scope"], "true");
    let scope_id = scope.id.clone().unwrap();
    let mappers = admin
        .client_scope_mappers("dive-xkc", &scope_id)
        .await
        .unwrap();
    assert_eq!(mappers.len(), 4, "{mappers:#?}");
    for name in DIVE_ATTRIBUTES {
        let m = mappers.iter().find(|m| m.name == name).expect(name);
        assert_eq!(m.protocol_mapper, "oidc-usermodel-attribute-mapper");
        assert_eq!(m.config["claim.name"], name);
        assert_eq!(m.config["user.attribute"], name);
        assert_eq!(m.config["jsonType.label"], "String");
        for claim in [
            "id.token.claim",
            "access.token.claim",
            "userinfo.token.claim",
        ] {
            assert_eq!(m.config[claim], "true", "{name} {claim}");
        }
        let multi = if name == "acpCOI" { "true" } else { "false" };
        assert_eq!(m.config["multivalued"], multi, "{name}");
    }
    let defaults = admin
        .default_default_client_scopes("dive-xkc")
        .await
        .unwrap();
    assert!(defaults.iter().any(|s| s.name == "dive-attributes"));

    let client = admin
        .client_by_client_id("dive-xkc", "dive-verify")
        .await
        .unwrap()
        .expect("client dive-verify");
    assert_eq!(client.public_client, Some(true));
    assert_eq!(client.standard_flow_enabled, Some(true));
    assert_eq!(client.direct_access_grants_enabled, Some(true));
    assert_eq!(client.implicit_flow_enabled, Some(false));
    assert_eq!(
        client.redirect_uris,
        Some(vec!["http://127.0.0.1/dive-verify/callback".to_string()])
    );
    assert_eq!(
        client.attributes.as_ref().unwrap()["pkce.code.challenge.method"],
        "S256"
    );
    let client_scopes = admin
        .client_default_scopes("dive-xkc", client.id.as_deref().unwrap())
        .await
        .unwrap();
    assert!(client_scopes.iter().any(|s| s.name == "dive-attributes"));
}

/// Every test user logs in with the password in the store; the ID token carries the claims.
async fn check_logins(h: &Harness) {
    for u in test_users(CODE) {
        let password = h.user_password(&u.username).await;
        assert_eq!(password.len(), 24);
        let claims = login_claims(
            &h.trust,
            &h.url,
            "dive-xkc",
            "dive-verify",
            &u.username,
            &password,
        )
        .await
        .unwrap_or_else(|e| panic!("login of {}: {e}", u.username));
        assert_eq!(claims["preferred_username"], u.username.as_str());
        assert_eq!(claims["uniqueID"], u.username.as_str(), "{claims:#}");
        assert_eq!(claims["clearance"], u.clearance(), "{claims:#}");
        assert_eq!(claims["countryOfAffiliation"], "XKC", "{claims:#}");
        assert!(
            claims["acpCOI"].is_array(),
            "acpCOI is an array: {claims:#}"
        );
        assert_eq!(sorted(&claims["acpCOI"]), ["NATO"], "{claims:#}");
        assert_eq!(claims["email"], u.email.as_str());
        assert_eq!(claims["family_name"], u.last_name.as_str());
    }
    // A wrong password is refused with Keycloak's reason, and the error does not echo it.
    let err = login_claims(
        &h.trust,
        &h.url,
        "dive-xkc",
        "dive-verify",
        "testuser-xkc-1",
        "not-the-password",
    )
    .await
    .unwrap_err();
    let text = err.to_string();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401), "{text}");
    assert!(text.contains("Invalid user credentials"), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
    assert!(!err.is_retryable());
}

/// Changes behind dive's back are put right by the next run, which says what it changed;
/// what dive does not own (an operator's profile attribute, a user's other attributes) stays.
async fn drift_is_repaired(h: &Harness) {
    let admin = h.admin().await;
    let mut realm = admin.realm("dive-xkc").await.unwrap().unwrap();
    realm.display_name = Some("Renamed by hand".into());
    admin.update_realm("dive-xkc", &realm).await.unwrap();

    let mut profile = admin.user_profile("dive-xkc").await.unwrap();
    let attrs = profile["attributes"].as_array_mut().unwrap();
    attrs.push(json!({"name": "department", "displayName": "Department",
                      "permissions": {"view": ["admin"], "edit": ["admin"]}}));
    let clearance = attrs.iter_mut().find(|a| a["name"] == "clearance").unwrap();
    clearance["validations"] = json!({"options": {"options": ["SECRET"]}});
    admin
        .update_user_profile("dive-xkc", &profile)
        .await
        .unwrap();

    let scope_id = admin
        .client_scope_by_name("dive-xkc", "dive-attributes")
        .await
        .unwrap()
        .unwrap()
        .id
        .unwrap();
    let mapper = admin
        .client_scope_mappers("dive-xkc", &scope_id)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.name == "acpCOI")
        .unwrap();
    assert!(
        admin
            .delete_client_scope_mapper("dive-xkc", &scope_id, mapper.id.as_deref().unwrap())
            .await
            .unwrap()
    );

    let client = admin
        .client_by_client_id("dive-xkc", "dive-verify")
        .await
        .unwrap()
        .unwrap();
    let mut changed_client = client.clone();
    changed_client.public_client = Some(false);
    admin
        .update_client("dive-xkc", client.id.as_deref().unwrap(), &changed_client)
        .await
        .unwrap();

    let mut user = admin
        .user_by_username("dive-xkc", "testuser-xkc-2")
        .await
        .unwrap()
        .unwrap();
    let user_id = user.id.clone().unwrap();
    let attributes = user.attributes.as_mut().unwrap();
    attributes.insert("clearance".into(), vec!["SECRET".into()]);
    attributes.insert("department".into(), vec!["J6".into()]);
    admin
        .update_user("dive-xkc", &user_id, &user)
        .await
        .unwrap();
    admin
        .reset_password(
            "dive-xkc",
            &admin_user_id_of(&admin, "testuser-xkc-3").await,
            "Changed-0ut-of-band",
        )
        .await
        .unwrap();

    let (state, out, _) = h.run(&workflow(false), "dive-xkc", "dive-verify").await;
    assert_eq!(state, RunState::Succeeded, "{out:#?}");
    assert_eq!(out["realm"]["updated"], true);
    assert_eq!(out["realm"]["created"], false);
    assert_eq!(out["profile"]["updated"], json!(["clearance"]));
    assert_eq!(out["profile"]["added"], json!([]));
    assert_eq!(out["scope"]["mappers_added"], json!(["acpCOI"]));
    assert_eq!(out["scope"]["created"], false);
    assert_eq!(out["client"]["fixed"], json!(["publicClient"]));
    assert_eq!(out["client"]["created"], false);
    let users = out["users"]["users"].as_array().unwrap();
    assert_eq!(users[1]["updated"], true);
    assert_eq!(users[2]["password_set"], true, "{users:#?}");
    assert_eq!(out["users"]["unchanged"], 2);

    let profile = admin.user_profile("dive-xkc").await.unwrap();
    assert!(
        profile["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "department"),
        "the operator's attribute survived the merge"
    );
    let user = admin
        .user_by_username("dive-xkc", "testuser-xkc-2")
        .await
        .unwrap()
        .unwrap();
    let attributes = user.attributes.unwrap();
    assert_eq!(attributes["clearance"], ["CONFIDENTIAL"]);
    assert_eq!(attributes["department"], ["J6"]);
    check_realm(h).await;
    check_logins(h).await;

    let (_, out, _) = h.run(&workflow(false), "dive-xkc", "dive-verify").await;
    for phase in ["realm", "profile", "scope", "client", "users"] {
        assert_eq!(out[phase]["changed"], false, "{phase}: {:#}", out[phase]);
    }
}

async fn admin_user_id_of(admin: &KeycloakAdmin, username: &str) -> String {
    admin
        .user_by_username("dive-xkc", username)
        .await
        .unwrap()
        .unwrap()
        .id
        .unwrap()
}

/// A run that fails after the Keycloak phases is rolled back: what it created is deleted,
/// what was there before stays.
async fn rollback_removes_what_the_run_created(h: &Harness) {
    let admin = h.admin().await;
    let failing = workflow(true);

    // A new realm: the rollback deletes it (and everything in it).
    let (state, out, run) = h.run(&failing, "dive-xkc-rollback", "dive-verify").await;
    assert_eq!(state, RunState::RolledBack, "{:?}", run.error);
    assert_eq!(out["realm"]["created"], true);
    for id in ["realm", "scope", "client", "users"] {
        let p = run.phases.iter().find(|p| p.id == id).unwrap();
        let compensation = p.compensation.as_ref().unwrap_or_else(|| panic!("{id}"));
        assert_eq!(compensation.state, PhaseState::Compensated, "{id}: {p:#?}");
    }
    assert!(
        admin.realm("dive-xkc-rollback").await.unwrap().is_none(),
        "the realm the run created is gone"
    );

    // The existing realm: only the client this run created goes; the realm, the scope and the
    // users (all there before) stay.
    let (state, out, run) = h.run(&failing, "dive-xkc", "dive-verify-rollback").await;
    assert_eq!(state, RunState::RolledBack, "{:?}", run.error);
    assert_eq!(out["realm"]["created"], false);
    assert_eq!(out["scope"]["created"], false);
    assert_eq!(out["client"]["created"], true);
    assert_eq!(out["users"]["created"], 0);
    assert!(
        admin
            .client_by_client_id("dive-xkc", "dive-verify-rollback")
            .await
            .unwrap()
            .is_none()
    );
    assert!(admin.realm("dive-xkc").await.unwrap().is_some());
    check_realm(h).await;
    check_logins(h).await;
}

/// Keycloak's status and message survive into errors; what a retry can fix is told apart; no
/// password shows up in an error or in `Debug`.
async fn errors_keep_keycloak_status_and_message(h: &Harness, stack: &Stack) {
    let admin = h.admin().await;
    let err = admin
        .get::<Value>("/admin/realms/dive-missing")
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("keycloak XKC: GET /admin/realms/dive-missing: 404 Not Found"),
        "{text}"
    );
    assert!(text.contains("Realm not found"), "{text}");
    assert!(!err.is_retryable());
    assert!(admin.realm("dive-missing").await.unwrap().is_none());

    // 409 keeps Keycloak's message.
    let master = admin.realm("master").await.unwrap().unwrap();
    let err = admin
        .create_realm(&dive_keycloak::types::RealmRep {
            realm: master.realm.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert!(err.to_string().contains("409 Conflict: "), "{err}");
    assert!(!err.message().is_empty(), "{err}");

    // A token that Keycloak stops accepting (the admin's sessions are logged out) is fetched
    // again on the 401, and the call goes through.
    let admin_id = admin
        .user_by_username("master", "admin")
        .await
        .unwrap()
        .unwrap()
        .id
        .unwrap();
    admin
        .post(
            &format!("/admin/realms/master/users/{admin_id}/logout"),
            &json!({}),
        )
        .await
        .unwrap();
    assert_eq!(admin.logins(), 1);
    assert!(admin.realm("master").await.unwrap().is_some());
    assert_eq!(admin.logins(), 2, "a refused token was replaced");

    let debug = format!("{admin:?}");
    assert!(!debug.contains(&stack.admin_password), "{debug}");

    // Bad credentials: a 401 with Keycloak's reason, not retryable, password not echoed.
    let wrong = format!("{}-wrong", stack.admin_password);
    let err = KeycloakAdmin::connect(&h.trust, &h.url, "admin", &wrong)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401), "{text}");
    assert!(text.contains("Invalid user credentials"), "{text}");
    assert!(!text.contains(&wrong) && !err.is_retryable(), "{text}");
    let err = wait_for_admin_token(&h.trust, &h.url, "admin", &wrong, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(
        err.status().map(|s| s.as_u16()),
        Some(401),
        "fails at once: {err}"
    );

    // Nobody listening: retryable, and waiting for a token gives up after its timeout.
    let closed = format!("https://127.0.0.1:{}", free_port());
    let err = KeycloakAdmin::connect(&h.trust, &closed, "admin", "x")
        .await
        .unwrap_err();
    assert!(
        matches!(err, KeycloakError::Transport { .. }) && err.is_retryable(),
        "{err}"
    );
    let started = Instant::now();
    let err = wait_for_admin_token(&h.trust, &closed, "admin", "x", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(err, KeycloakError::NotReady { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A phase against a realm that does not exist fails fatally and names it.
    let yaml = format!(
        r#"
name: keycloak-missing-realm
phases:
  - id: client
    type: keycloak.client
    instance: XKC
    url: "{}"
    realm: dive-missing
"#,
        h.url
    );
    let plan = Workflow::parse("missing.yaml", &yaml)
        .unwrap()
        .plan(&BTreeMap::new())
        .unwrap();
    let outcome = h.engine.start(&plan, &RunOptions::default()).await.unwrap();
    // Nothing succeeded, so the rollback has nothing to undo.
    assert_eq!(outcome.state, RunState::RolledBack);
    let run = h.db.load_run(outcome.run_id).await.unwrap();
    let error = run.phases[0].error.clone().unwrap();
    assert!(
        error.contains("realm `dive-missing` does not exist"),
        "{error}"
    );
    assert_eq!(run.phases[0].attempts, 1, "fatal: not retried");
}

#[test]
fn phase_fields_are_checked_when_the_workflow_is_parsed() {
    dive_phases::register();
    let parse = |kind: &str, extra: &str| {
        let yaml = format!(
            "name: k\nphases:\n  - id: a\n    type: {kind}\n    url: http://127.0.0.1:1\n{extra}"
        );
        Workflow::parse("k.yaml", &yaml).map(|_| ())
    };
    for kind in [
        "keycloak.realm",
        "keycloak.user-profile",
        "keycloak.client-scope",
        "keycloak.client",
        "keycloak.users",
    ] {
        parse(kind, "    instance: fra\n").unwrap();
        let e = parse(kind, "    instance: FRA\n    colour: blue\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `colour`"), "{kind}: {e}");
        let e = parse(kind, "    instance: FRANCE\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an ISO 3166-1 alpha-3 code"), "{kind}: {e}");
        let e = parse(kind, "    instance: FRA\n    realm: a/b\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("realm `a/b`"), "{kind}: {e}");
    }
    parse(
        "keycloak.client",
        "    instance: FRA\n    client_id: other\n",
    )
    .unwrap();
}
