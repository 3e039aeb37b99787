//! A PostgreSQL stack on each runtime: `secret.ensure` + a PostgreSQL `service` +
//! `postgres.database`, run for real, run again (nothing changes), rolled back cleanly when a
//! later phase fails — and no secret value anywhere in run output, logs or the state database.

mod common;

use common::{TestEnv, free_port};
use std::process::Command;

fn code() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("s{}", &id[id.len() - 6..])
}

/// The stack, optionally followed by a phase that fails.
fn stack(code: &str, port: u16, fail_after: bool) -> String {
    let mut y = format!(
        r#"name: stack
lock: "stack:{code}"
phases:
  - id: admin-secret
    type: secret.ensure
    name: {code}/postgres/password
  - id: owner-secret
    type: secret.ensure
    name: {code}/postgres/app-password
  - id: postgres
    type: service
    after: [admin-secret]
    instance: {code}
    name: postgres
    template: postgres
    port: {port}
    password_secret: {code}/postgres/password
    remove_data: true
    timeout: 3m
  - id: database
    type: postgres.database
    after: [postgres, owner-secret]
    instance: {code}
    port: "${{phases.postgres.output.ports.postgres}}"
    admin_password_secret: {code}/postgres/password
    database: app
    owner: app
    owner_password_secret: {code}/postgres/app-password
"#
    );
    if fail_after {
        y.push_str(
            "  - id: broken\n    type: exec\n    after: [database]\n    command: [\"sh\", \"-c\", \"echo no >&2; exit 1\"]\n",
        );
    }
    y
}

fn reveal(env: &TestEnv, name: &str) -> String {
    let out = env.dive(&["secrets", "show", name, "--reveal"]);
    out.assert_code(0);
    let value = out.stdout.trim().to_string();
    assert!(value.len() >= 16, "a generated secret: {value:?}");
    value
}

/// Logs in as the owner through the published 127.0.0.1 port.
fn owner_can_connect(port: u16, password: &str) -> Result<String, String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let opts = sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username("app")
            .password(password)
            .database("app");
        let mut conn = sqlx::PgConnection::connect_with(&opts)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query_scalar::<_, String>("SELECT current_database()::text")
            .fetch_one(&mut conn)
            .await
            .map_err(|e| e.to_string())
    })
}

/// Everything a secret must never appear in.
fn assert_nowhere(env: &TestEnv, secrets: &[String], outputs: &[&str]) {
    let mut haystacks: Vec<(String, String)> = outputs
        .iter()
        .enumerate()
        .map(|(i, o)| (format!("command output #{i}"), o.to_string()))
        .collect();
    for table in [
        "runs",
        "phases",
        "phase_attempts",
        "compensations",
        "secrets",
        "locks",
    ] {
        haystacks.push((
            format!("table {table}"),
            env.psql(&format!(
                "SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM {table} t"
            )),
        ));
    }
    for entry in walkdir(env.home.path()) {
        if let Ok(text) = std::fs::read(&entry) {
            // Data files of the PostgreSQL service hold a SCRAM verifier, never the password.
            haystacks.push((
                entry.display().to_string(),
                String::from_utf8_lossy(&text).to_string(),
            ));
        }
    }
    for secret in secrets {
        for (what, text) in &haystacks {
            assert!(
                !text.contains(secret.as_str()),
                "a secret value appears in {what}"
            );
        }
    }
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                files.push(p);
            }
        }
    }
    files
}

fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

fn exercise(runtime: &str) {
    let env = TestEnv::new();
    let code = code();
    let port = free_port();
    let wf = env.workflow("stack.yaml", &stack(&code, port, false));

    let first = env.dive(&["run", "workflow", &wf, "--runtime", runtime, "--json"]);
    first.assert_code(0);
    let doc = first.json();
    assert_eq!(doc["state"], "succeeded");
    assert_eq!(doc["phases"][2]["output"]["ensured"], "created");
    assert_eq!(doc["phases"][2]["output"]["runtime"], runtime);
    assert_eq!(doc["phases"][3]["output"]["created_database"], true);

    let admin = reveal(&env, &format!("{code}/postgres/password"));
    let owner = reveal(&env, &format!("{code}/postgres/app-password"));
    assert_eq!(owner_can_connect(port, &owner).as_deref(), Ok("app"));
    assert!(
        owner_can_connect(port, "wrong-password").is_err(),
        "password auth is on"
    );

    // Again: everything is already there.
    let again = env.dive(&["run", "workflow", &wf, "--runtime", runtime, "--json"]);
    again.assert_code(0);
    let doc = again.json();
    assert_eq!(doc["phases"][0]["output"]["created"], false);
    assert_eq!(doc["phases"][2]["output"]["ensured"], "unchanged");
    assert_eq!(doc["phases"][3]["output"]["created_database"], false);

    if runtime == "docker" {
        let name = format!("dive-{code}-postgres");
        let (ok, labels) = docker(&["inspect", "-f", "{{json .Config.Labels}}", &name]);
        assert!(ok, "container {name} exists");
        assert!(
            labels.contains("\"dive.managed\":\"true\"")
                && labels.contains(&format!("\"dive.instance\":\"{code}\"")),
            "{labels}"
        );
        let (_, bindings) = docker(&["inspect", "-f", "{{json .HostConfig.PortBindings}}", &name]);
        assert!(
            bindings.contains("\"HostIp\":\"127.0.0.1\"") && bindings.contains(&port.to_string()),
            "{bindings}"
        );
    }

    let shown = env.dive(&["runs", "show", &first.run_id(), "--json"]);
    let listed = env.dive(&["secrets", "list", "--json"]);
    assert_nowhere(
        &env,
        &[admin.clone(), owner.clone()],
        &[
            &first.stdout,
            &first.stderr,
            &again.stdout,
            &again.stderr,
            &shown.stdout,
            &listed.stdout,
        ],
    );

    // A failed re-run leaves what it found: the running stack is not compensated.
    let broken = env.workflow(
        "broken.yaml",
        &stack(&code, port, true).replace("stack:", "broken:"),
    );
    let failed = env.dive(&["run", "workflow", &broken, "--runtime", runtime, "--json"]);
    failed.assert_code(1);
    assert_eq!(failed.json()["state"], "rolled_back");
    assert_eq!(
        owner_can_connect(port, &owner).as_deref(),
        Ok("app"),
        "the stack still runs"
    );

    // A failure in a fresh stack rolls it all back: database, role and server with its data.
    let fresh = self::code();
    let fresh_port = free_port();
    let broken = env.workflow(
        "fresh.yaml",
        &stack(&fresh, fresh_port, true).replace("stack:", "fresh:"),
    );
    let failed = env.dive(&["run", "workflow", &broken, "--runtime", runtime, "--json"]);
    failed.assert_code(1);
    let doc = failed.json();
    assert_eq!(doc["state"], "rolled_back", "{doc}");
    let by_id = |id: &str| {
        doc["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id("postgres")["state"], "compensated");
    assert_eq!(by_id("database")["state"], "compensated");
    assert_eq!(by_id("broken")["state"], "failed");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", fresh_port)).is_err(),
        "the server is gone after rollback"
    );
    match runtime {
        "docker" => {
            let (exists, _) = docker(&["inspect", &format!("dive-{fresh}-postgres")]);
            assert!(!exists, "container removed");
            let (vol, _) = docker(&["volume", "inspect", &format!("dive-{fresh}-pgdata")]);
            assert!(!vol, "data volume removed (remove_data: true)");
        }
        _ => {
            let inst = env.home.path().join("instances").join(&fresh);
            assert!(
                !inst.join("services/postgres.json").exists(),
                "service removed"
            );
            assert!(
                !inst.join("data/pgdata").exists(),
                "data removed (remove_data: true)"
            );
        }
    }
    assert_nowhere(&env, &[admin, owner], &[&failed.stdout, &failed.stderr]);
    env.dive(&["cleanup", "--instance", &fresh, "--force"])
        .assert_code(0);
    env.dive(&["cleanup", "--instance", &code, "--force"])
        .assert_code(0);
}

#[test]
fn postgres_stack_on_the_local_runtime() {
    exercise("local");
}

#[test]
fn postgres_stack_on_the_docker_runtime() {
    exercise("docker");
}

#[test]
fn a_wrong_master_key_is_refused_and_overwrites_nothing() {
    let env = TestEnv::new();
    let code = code();
    let wf = env.workflow(
        "secrets.yaml",
        &format!("name: s\nphases:\n  - {{ id: a, type: secret.ensure, name: {code}/a }}\n"),
    );
    env.dive(&["run", "workflow", &wf]).assert_code(0);
    let before = env.psql("SELECT string_agg(t::text, ',') FROM secrets t");
    let runs_before = env.runs_count();

    let other_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let mut cmd = env.command(&["run", "workflow", &wf]);
    let out = cmd.env("DIVE_MASTER_KEY", other_key).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("master key does not match"), "{stderr}");
    assert!(
        stderr.contains("DIVE_MASTER_KEY"),
        "names where the key came from: {stderr}"
    );
    assert!(!stderr.contains(other_key));
    assert_eq!(
        env.psql("SELECT string_agg(t::text, ',') FROM secrets t"),
        before
    );
    assert_eq!(env.runs_count(), runs_before, "no run was started");

    let mut reveal = env.command(&["secrets", "show", &format!("{code}/a"), "--reveal"]);
    let out = reveal.env("DIVE_MASTER_KEY", other_key).output().unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty(), "nothing revealed with the wrong key");
}
