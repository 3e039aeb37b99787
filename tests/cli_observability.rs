//! `dive serve` scraped by a real Prometheus while a hub (USA) and a spoke (FRA) are deployed,
//! linked and verified on the local runtime (and a second spoke, GBR, deployed): PromQL returns the expected series and values, the
//! heartbeat records `federation-verify` runs (and skips a pair whose lock is held, saying so),
//! stopping FRA's Keycloak turns its direction failing within two heartbeats, every Grafana
//! panel's expression returns data, the dashboards match Grafana's dashboard model, the alert rules load and pass their unit tests, a real
//! scrape passes `promtool check metrics`, `dive status` shows the stopped Keycloak, and SIGTERM
//! stops the exporter cleanly. `dive db validate` finds a run corrupted by hand.

mod common;

use common::{Reset, TestEnv, free_port, live_in_group, wait_until};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEPLOY_TIMEOUT: Duration = Duration::from_secs(900);
const HEARTBEAT_S: u64 = 5;

fn observability() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("observability")
}

/// A Prometheus of this test's own, scraping `target` every second with dive's alert rules.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
                 rule_files: [\"{}\"]\n\
                 scrape_configs:\n  - job_name: dive\n    static_configs:\n      - targets: [\"{target}\"]\n",
                observability().join("alerts.yml").display()
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus (scripts/setup installs it)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The result vector of an instant PromQL query (empty while Prometheus is starting).
    fn query(&self, expr: &str) -> Vec<Value> {
        let doc: Value = get_json(&format!("{}/api/v1/query", self.url), &[("query", expr)]);
        assert_ne!(doc["status"], "error", "query `{expr}`: {doc}");
        doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The value of the single series `expr` selects, if there is exactly one.
    fn value(&self, expr: &str) -> Option<f64> {
        match self.query(expr).as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The addresses the processes of group `pgid` listen on (TCP), from /proc.
fn listening(pgid: i32) -> Vec<String> {
    let mut inodes = std::collections::HashSet::new();
    for pid in live_in_group(pgid) {
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                let link = link.to_string_lossy().to_string();
                if let Some(inode) = link
                    .strip_prefix("socket:[")
                    .and_then(|l| l.strip_suffix(']'))
                {
                    inodes.insert(inode.to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address rem_address st ... inode (field 9); 0A is LISTEN.
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                out.push(f[1].to_string());
            }
        }
    }
    out
}

/// Keycloak answers HTTPS only, with a certificate of the dive CA: a client trusting the CA
/// gets in, one trusting the public roots instead is refused, plain HTTP gets no answer.
fn https_only_with_the_dive_ca(env: &TestEnv) {
    let url = env.dive(&["hub", "status", "--json"]).json()["keycloak_url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let realm = format!("{url}/realms/dive-usa");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let trusted = env
            .trust()
            .client(reqwest::Client::builder())
            .build()
            .unwrap();
        let answer = trusted.get(&realm).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        let public = reqwest::Client::new();
        let err = public.get(&realm).send().await.unwrap_err();
        let why = dive_tls::certificate_problem(&err).unwrap_or_else(|| format!("{err:?}"));
        assert!(why.contains("UnknownIssuer"), "{why}");
        let plain = realm.replacen("https://", "http://", 1);
        assert!(
            public.get(&plain).send().await.is_err(),
            "plain HTTP to {plain} got an answer"
        );
    });
}

/// Whether a /proc/net/tcp{,6} local address (hex, as the kernel writes it) is on loopback.
fn is_loopback(hex: &str) -> bool {
    let ip = hex.split(':').next().unwrap_or_default();
    match ip.len() {
        8 => ip.ends_with("7F"), // 127.x.x.x, little-endian
        // ::1, or ::ffff:127.x.x.x (IPv4-mapped)
        _ => {
            ip == "00000000000000000000000001000000"
                || (ip.starts_with("0000000000000000FFFF0000") && ip.ends_with("7F"))
        }
    }
}

fn client() -> (tokio::runtime::Runtime, reqwest::Client) {
    (
        tokio::runtime::Runtime::new().unwrap(),
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    )
}

fn get_json(url: &str, query: &[(&str, &str)]) -> Value {
    let (rt, client) = client();
    rt.block_on(async {
        match client.get(url).query(query).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    })
}

/// (status, content type, body) of a GET with an optional Accept header.
fn get(url: &str, accept: Option<&str>) -> Option<(u16, String, String)> {
    let (rt, client) = client();
    rt.block_on(async {
        let mut req = client.get(url);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let r = req.send().await.ok()?;
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Some((status, ct, r.text().await.ok()?))
    })
}

fn promtool(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(observability())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting promtool (scripts/setup installs it)");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn assert_ok(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_load_and_pass_their_unit_tests() {
    assert_ok(
        &promtool(&["check", "rules", "alerts.yml"], None),
        "check rules",
    );
    assert_ok(
        &promtool(&["test", "rules", "alerts_test.yml"], None),
        "test rules",
    );
    assert_ok(
        &promtool(&["check", "config", "prometheus.yml"], None),
        "check config",
    );
}

/// Every dashboard JSON file under `observability/grafana`.
fn dashboards() -> Vec<PathBuf> {
    let dashboards: Vec<PathBuf> = std::fs::read_dir(observability().join("grafana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(!dashboards.is_empty());
    dashboards
}

/// Runs `observability/grafana/check` (Grafana's foundation SDK, decoding strictly) on `files`.
fn grafana_check(files: &[PathBuf]) -> std::process::Output {
    Command::new("go")
        .arg("run")
        .arg(".")
        .args(files)
        .current_dir(observability().join("grafana/check"))
        .output()
        .expect("starting go (the Go toolchain builds the dashboard checker)")
}

/// The dashboards decode strictly into the dashboard model of Grafana's own foundation SDK
/// (schema version 42: unknown fields, wrong types and missing required fields are errors) and
/// meet its constraints; the checker refuses a dashboard with a field Grafana does not know.
#[test]
fn grafana_dashboards_match_grafanas_dashboard_model() {
    assert_ok(&grafana_check(&dashboards()), "grafana check");

    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(&dashboards()[0]).unwrap()).unwrap();
    doc["panels"][1]["options"]["frameIndexx"] = 0.into();
    std::fs::write(&broken, doc.to_string()).unwrap();
    let out = grafana_check(&[broken]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.json") && stderr.contains("unexpected field 'frameIndexx'"),
        "{stderr}"
    );
}

/// The dashboard is the Grafana dashboard model (schema version 42, Grafana 12): a title, a uid,
/// panels with unique ids, a type, a title and a grid position, and each query a refId and a
/// PromQL expression. Returns every expression.
fn dashboard_expressions(path: &Path) -> Vec<String> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for field in ["title", "uid"] {
        assert!(
            doc[field].is_string(),
            "{}: `{field}` missing",
            path.display()
        );
    }
    assert_eq!(doc["schemaVersion"], 42);
    let mut ids = std::collections::HashSet::new();
    let mut exprs = Vec::new();
    for p in doc["panels"].as_array().expect("panels") {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        assert!(p["title"].is_string() && p["type"].is_string(), "{p}");
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_u64(), "panel {id}: gridPos.{k}");
        }
        assert!(p["gridPos"]["x"].as_u64().unwrap() + p["gridPos"]["w"].as_u64().unwrap() <= 24);
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["type"], "prometheus", "panel {id}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id} has no query");
        for t in targets {
            assert!(t["refId"].is_string(), "panel {id}: refId");
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    exprs
}

#[test]
fn serve_is_scraped_by_prometheus_and_the_heartbeat_sees_a_stopped_keycloak() {
    let mut env = TestEnv::new();
    env.own_ports();
    let _reset = Reset(
        &env,
        vec![("hub", "USA"), ("spoke", "FRA"), ("spoke", "GBR")],
    );

    // Bad flags are refused before anything starts.
    let out = env.dive(&["serve", "--listen", "nowhere"]);
    out.assert_code(2);
    assert!(out.stderr.contains("--listen `nowhere`"), "{}", out.stderr);
    env.dive(&["serve", "--heartbeat", "often"]).assert_code(2);

    env.spawn(&["run", "workflow", "quickstart"])
        .wait(DEPLOY_TIMEOUT)
        .assert_code(0);
    // A second spoke, not linked: `dive status` and `dive spoke status` show it too.
    env.spawn(&["spoke", "deploy", "GBR"])
        .wait(DEPLOY_TIMEOUT)
        .assert_code(0);
    let out = env.dive(&["spoke", "deploy"]);
    out.assert_code(2);
    assert!(out.stderr.contains("which spoke?"), "{}", out.stderr);

    // Every service dive started listens on loopback only (Keycloak with its local cache opens
    // no cluster ports), and none has a secret in its environment: secrets reach services as
    // files only their user reads.
    let secrets = env.secret_values();
    assert!(secrets.len() > 10, "{} secrets?", secrets.len());
    for code in ["usa", "fra", "gbr"] {
        for service in ["keycloak", "postgres"] {
            let pidfile = env
                .home
                .path()
                .join(format!("instances/{code}/services/{service}.json"));
            let pid: Value =
                serde_json::from_str(&std::fs::read_to_string(&pidfile).unwrap()).unwrap();
            let pgid = pid["pid"].as_i64().unwrap() as i32;
            for p in live_in_group(pgid) {
                let environ = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
                let environ = String::from_utf8_lossy(&environ);
                for secret in &secrets {
                    assert!(
                        !environ.contains(secret.as_str()),
                        "a secret is in the environment of {code} {service} (pid {p})"
                    );
                }
            }
            let addrs = listening(pgid);
            assert!(!addrs.is_empty(), "{code} {service} listens nowhere?");
            assert!(
                addrs.iter().all(|a| is_loopback(a)),
                "{code} {service} listens beyond loopback: {addrs:?}"
            );
        }
    }

    https_only_with_the_dive_ca(&env);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(env.home.path()) & 0o077 & !0o001,
        0,
        "DIVE_HOME is private"
    );
    assert_eq!(mode(&env.home.path().join("master.key")), 0o600);
    let files = env
        .home
        .path()
        .join("instances/usa/services/keycloak.files");
    assert_eq!(mode(&files), 0o700);
    for f in ["keycloak.conf", "tls.key", "tls.crt", "ca.pem"] {
        assert_eq!(mode(&files.join(f)), 0o600, "{f}");
    }
    // PostgreSQL takes password logins with scram-sha-256 only (initdb --auth).
    let hba = env
        .home
        .path()
        .join("instances/usa/data/pgdata/pg_hba.conf");
    let hba = std::fs::read_to_string(hba).unwrap();
    let rules: Vec<&str> = hba
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(!rules.is_empty());
    assert!(
        rules.iter().all(|l| l.ends_with("scram-sha-256")),
        "{rules:#?}"
    );

    let addr = format!("127.0.0.1:{}", free_port());
    let heartbeat = format!("{HEARTBEAT_S}s");
    let serve = env.spawn(&["serve", "--listen", &addr, "--heartbeat", &heartbeat]);
    let base = format!("http://{addr}");
    wait_until(
        "dive serve answers /healthz",
        Duration::from_secs(60),
        || get(&format!("{base}/healthz"), None).is_some_and(|(s, _, _)| s == 200),
    );

    // The classic text format passes promtool; Prometheus is offered OpenMetrics.
    let (status, ct, text) = get(&format!("{base}/metrics"), None).unwrap();
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert_ok(
        &promtool(&["check", "metrics"], Some(&text)),
        "check metrics",
    );
    let (_, ct, om) = get(
        &format!("{base}/metrics"),
        Some("application/openmetrics-text;version=1.0.0"),
    )
    .unwrap();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(om.trim_end().ends_with("# EOF"));
    let admin = env.dive(&["secrets", "show", "usa/keycloak/admin-password", "--reveal"]);
    let admin = admin.stdout.trim();
    assert!(
        !admin.is_empty() && !text.contains(admin),
        "no secret in the metrics"
    );

    let prom = Prometheus::start(&addr);
    wait_until(
        "Prometheus sees both directions verified",
        Duration::from_secs(120),
        || {
            prom.value(r#"dive_federation_verification_ok{source="USA",target="FRA"}"#) == Some(1.0)
                && prom.value(r#"dive_federation_verification_ok{source="FRA",target="USA"}"#)
                    == Some(1.0)
        },
    );
    // The quickstart ran in another process: counted all the same.
    assert_eq!(
        prom.value(r#"dive_runs_finished_total{workflow="quickstart",outcome="succeeded"}"#),
        Some(1.0)
    );
    wait_until(
        "the heartbeat's runs are counted",
        Duration::from_secs(60),
        || {
            prom.value(
                r#"dive_runs_finished_total{workflow="federation-verify",outcome="succeeded"}"#,
            )
            .is_some_and(|n| n >= 2.0)
        },
    );
    wait_until("service health is checked", Duration::from_secs(60), || {
        prom.value(r#"dive_instance_service_up{code="FRA",service="keycloak"}"#) == Some(1.0)
    });
    assert!(
        prom.value(r#"dive_federation_seconds_since_success{source="USA",target="FRA"}"#)
            .is_some_and(|s| (0.0..60.0).contains(&s))
    );
    assert!(
        prom.value(r#"dive_secret_age_seconds{secret="usa/keycloak/admin-password"}"#)
            .is_some_and(|s| s > 0.0)
    );
    assert!(
        prom.value(r#"sum(dive_phase_duration_seconds_count{type="federation.verify"})"#)
            .is_some_and(|n| n >= 4.0)
    );
    let rules = get_json(&format!("{}/api/v1/rules", prom.url), &[]);
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, 6, "{rules}");

    // A pair whose lock another run holds is skipped, said so, and counted as a refusal.
    let hold = env.workflow(
        "hold.yaml",
        "name: hold\nlock: \"federation-verify:FRA\"\nphases:\n  - { id: wait, type: sleep, duration: 12s }\n",
    );
    // The heartbeat itself may hold the lock for a moment: try again until this run has it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = env.dive(&["run", "workflow", &hold]);
        if out.code == Some(3) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        out.assert_code(0);
        break;
    }
    wait_until("the refusal is counted", Duration::from_secs(30), || {
        prom.value(r#"dive_lock_refusals_total{workflow="federation-verify"}"#)
            .is_some_and(|n| n >= 1.0)
    });

    // Keycloak admin requests carry a request id, logged with the request.
    let out = env
        .command(&["--log-format", "json", "federation", "drift", "FRA"])
        .env("RUST_LOG", "info,dive_keycloak=debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let requests: Vec<Value> = json_lines(&stderr)
        .into_iter()
        .filter(|l| l["message"] == "keycloak admin request")
        .collect();
    assert!(!requests.is_empty(), "{stderr}");
    assert!(
        requests
            .iter()
            .all(|r| r["request_id"].as_str().is_some_and(|id| id.len() == 36))
    );

    // FRA's Keycloak stopped behind dive's back: failing within two heartbeats.
    let pidfile = env.home.path().join("instances/fra/services/keycloak.json");
    let pid: Value = serde_json::from_str(&std::fs::read_to_string(&pidfile).unwrap()).unwrap();
    let pid = pid["pid"].as_i64().unwrap() as i32;
    let stopped_at = chrono::Utc::now();
    // SAFETY: kill(2) on the process group of the Keycloak this test's deploy started (dive
    // starts each service in a session of its own).
    assert_eq!(unsafe { libc::kill(-pid, libc::SIGKILL) }, 0);
    let started = Instant::now();
    wait_until(
        "USA → FRA turns failing",
        Duration::from_secs(120),
        || prom.value(r#"dive_federation_verification_ok{source="USA",target="FRA"}"#) == Some(0.0),
    );
    let beats = env.psql(&format!(
        "SELECT count(*) FROM runs WHERE workflow = 'federation-verify' AND started_at > '{}'",
        stopped_at.to_rfc3339()
    ));
    let beats: u32 = beats.trim().parse().unwrap();
    assert!(
        beats <= 2,
        "failing only after {beats} heartbeats ({:?})",
        started.elapsed()
    );
    wait_until(
        "FRA's Keycloak reported down",
        Duration::from_secs(60),
        || prom.value(r#"dive_instance_service_up{code="FRA",service="keycloak"}"#) == Some(0.0),
    );
    // At a glance: three instances, FRA's Keycloak not running, USA → FRA failing.
    let doc = env.dive(&["status", "--json"]).json();
    let instances = doc["instances"].as_array().unwrap();
    let codes: Vec<&str> = instances
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes.len(), 3, "{doc}");
    for code in ["USA", "FRA", "GBR"] {
        assert!(codes.contains(&code), "{doc}");
    }
    let fra = instances.iter().find(|i| i["code"] == "FRA").unwrap();
    assert_ne!(fra["state"], "running", "{fra}");
    let services = fra["services"].as_array().unwrap();
    let keycloak = services.iter().find(|s| s["name"] == "keycloak").unwrap();
    assert_ne!(keycloak["state"], "running", "{keycloak}");
    let links = doc["links"].as_array().unwrap();
    let usa_fra = links
        .iter()
        .find(|d| d["from"] == "USA" && d["to"] == "FRA")
        .unwrap();
    assert_eq!(usa_fra["last"]["ok"], false, "{doc}");
    let text = env.dive(&["status"]);
    text.assert_code(0);
    assert!(
        text.stdout.contains("USA → FRA  FAILING"),
        "{}",
        text.stdout
    );
    let spokes = env.dive(&["spoke", "status", "--json"]).json();
    let spokes: Vec<&str> = spokes
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["code"].as_str().unwrap())
        .collect();
    assert_eq!(spokes, ["FRA", "GBR"]);

    let status = env.dive(&["federation", "status", "--json"]).json();
    let usa_fra = &status["links"][0]["directions"][0];
    assert_eq!(usa_fra["last_verification"]["ok"], false, "{status}");
    assert!(usa_fra["last_success"].is_string(), "{status}");

    // A heartbeat that finds FRA's Keycloak refusing connections opens its breaker. The
    // heartbeat that first reported FRA failing may have passed `reach-spoke` before the kill,
    // so this can take one more heartbeat.
    wait_until(
        "the heartbeat opens FRA's breaker",
        Duration::from_secs(60),
        || {
            prom.value(
                r#"dive_breaker_transitions_total{breaker="keycloak:FRA",transition="open"}"#,
            )
            .is_some_and(|n| n >= 1.0)
        },
    );

    // Every Grafana panel's expression returns data from this Prometheus.
    for path in dashboards() {
        for expr in dashboard_expressions(&path) {
            assert!(
                !prom.query(&expr).is_empty(),
                "{}: `{expr}` returns no data",
                path.display()
            );
        }
    }

    // SIGTERM: a clean stop.
    serve.signal(libc::SIGTERM);
    let out = serve.wait(Duration::from_secs(60));
    out.assert_code(0);
    assert!(out.stderr.contains("dive serve: stopped"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("heartbeat: USA ↔ FRA: skipped, lock `federation-verify:FRA` is held by run"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(admin) && !out.stdout.contains(admin));
}

#[test]
fn db_validate_finds_a_run_corrupted_by_hand() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "two.yaml",
        "name: two\nlock: two\nphases:\n  - { id: a, type: noop }\n  - { id: b, type: noop, after: [a] }\n",
    );
    let run_id = env.dive(&["run", "workflow", &wf, "--json"]).run_id();
    let out = env.dive(&["db", "validate"]);
    out.assert_code(0);
    assert!(out.stdout.contains("no problem found"), "{}", out.stdout);

    // Behind dive's back (triggers off, as a hand edit could): a phase of a succeeded run set
    // running again, a lock row nobody holds, a secret of an instance nobody registered.
    env.psql(&format!(
        "SET session_replication_role = replica; \
         UPDATE phases SET state = 'running' WHERE run_id = '{run_id}' AND phase_id = 'b'"
    ));
    env.psql(&format!(
        "INSERT INTO locks (key, run_id, pid, host) VALUES ('test:stale', '{run_id}', 1, 'elsewhere')"
    ));
    env.psql(
        "INSERT INTO secrets (name, version, nonce, ciphertext) VALUES \
         ('zzz/keycloak/admin-password', 1, '\\x000000000000000000000000', \
          '\\x00000000000000000000000000000000')",
    );
    let out = env.dive(&["db", "validate", "--json"]);
    out.assert_code(1);
    let doc = out.json();
    assert_eq!(doc["ok"], false);
    let problems: Vec<&str> = doc["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems.contains(
            &format!("run {run_id} (two) succeeded but its phase `b` is running").as_str()
        )
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("lock `test:stale` names run"))
    );
    assert!(
        problems.contains(
            &"secret `zzz/keycloak/admin-password` belongs to ZZZ, which is not registered"
        )
    );
}

/// `dive_phase_duration_seconds_count{type="noop"}` in a classic-format scrape of `base`.
fn noop_phases(base: &str) -> u64 {
    let (_, _, text) = get(&format!("{base}/metrics"), None).expect("a scrape");
    text.lines()
        .find_map(|l| l.strip_prefix("dive_phase_duration_seconds_count{type=\"noop\"} "))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[test]
fn metrics_count_settled_history_once() {
    let env = TestEnv::new();
    let wf = env.workflow(
        "two.yaml",
        "name: two\nlock: two\nphases:\n  - { id: a, type: noop }\n  - { id: b, type: noop, after: [a] }\n",
    );
    for _ in 0..3 {
        env.dive(&["run", "workflow", &wf]).assert_code(0);
    }
    // Those three ended long enough ago to be settled: read once, then kept.
    env.psql(
        "UPDATE runs SET started_at = started_at - interval '5 minutes', \
                         finished_at = finished_at - interval '5 minutes'",
    );
    let addr = format!("127.0.0.1:{}", free_port());
    let serve = env.spawn(&["serve", "--listen", &addr, "--heartbeat", "off"]);
    let base = format!("http://{addr}");
    wait_until("dive serve answers", Duration::from_secs(60), || {
        get(&format!("{base}/healthz"), None).is_some_and(|(s, _, _)| s == 200)
    });
    assert_eq!(noop_phases(&base), 6);
    assert_eq!(
        noop_phases(&base),
        6,
        "settled phases are not counted twice"
    );
    env.dive(&["run", "workflow", &wf]).assert_code(0);
    assert_eq!(noop_phases(&base), 8, "a recent run is read live");
    assert_eq!(noop_phases(&base), 8);
    serve.signal(libc::SIGTERM);
    serve.wait(Duration::from_secs(30)).assert_code(0);
}

/// The stderr of a `--log-format json` command as JSON objects (every line must be one).
fn json_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// The innermost span named `name` of a JSON log line.
fn span<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line["spans"]
        .as_array()?
        .iter()
        .rev()
        .find(|s| s["name"] == name)
}

#[test]
fn json_logs_carry_run_phase_and_the_trace_of_child_runs() {
    let mut env = TestEnv::new();
    let wf = env.workflow(
        "parent.yaml",
        "name: parent\nlock: parent\nphases:\n  - { id: first, type: noop }\n  \
         - { id: child, type: workflow, workflow: demo, after: [first] }\n",
    );
    let out = env.dive(&["--log-format", "json", "run", "workflow", &wf, "--json"]);
    out.assert_code(0);
    let parent = out.run_id();
    let lines = json_lines(&out.stderr);
    let started = |phase: &str| {
        lines
            .iter()
            .find(|l| l["message"] == "phase started" && l["phase"] == phase)
            .unwrap_or_else(|| panic!("no `phase started` line for {phase}: {}", out.stderr))
    };
    let first = started("first");
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["level"], "INFO");
    let run = span(first, "run").unwrap();
    assert_eq!(run["run_id"], parent.as_str());
    assert_eq!(run["workflow"], "parent");
    assert_eq!(
        run["trace_id"],
        parent.as_str(),
        "a root run's trace is itself"
    );
    // The child's lines: its own run id, the parent's trace id (its phases by their own ids).
    let prepare = started("prepare");
    let child = span(prepare, "run").unwrap();
    assert_eq!(child["workflow"], "demo");
    assert_ne!(child["run_id"], parent.as_str());
    assert_eq!(child["trace_id"], parent.as_str());
    let finished: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "run finished")
        .collect();
    assert_eq!(finished.len(), 2, "the child's and the parent's");

    // DIVE_LOG_FORMAT does the same; the text format carries the same ids (with RUST_LOG).
    env.set("DIVE_LOG_FORMAT", "json");
    let out = env.dive(&["run", "workflow", &wf]);
    out.assert_code(0);
    assert!(!json_lines(&out.stderr).is_empty());
    env.set("DIVE_LOG_FORMAT", "text").set("RUST_LOG", "info");
    let out = env.dive(&["run", "workflow", &wf, "--json"]);
    out.assert_code(0);
    let id = out.run_id();
    assert!(
        out.stderr.contains(&format!("run_id={id}"))
            && out.stderr.contains(&format!("trace_id={id}")),
        "{}",
        out.stderr
    );
}

#[test]
fn runs_show_events_tells_the_story_of_a_retried_phase() {
    let env = TestEnv::new();
    let marker = env.path("failed-once");
    let wf = env.workflow(
        "flaky.yaml",
        &format!(
            "name: flaky\nlock: flaky\nphases:\n  - {{ id: first, type: noop }}\n  \
             - id: flaky\n    type: exec\n    after: [first]\n    \
             retry: {{ max_attempts: 2, initial_delay: 300ms }}\n    \
             command: [\"sh\", \"-c\", \"[ -e {m} ] || {{ touch {m}; echo boom >&2; exit 1; }}\"]\n",
            m = marker.display()
        ),
    );
    let id = env.dive(&["run", "workflow", &wf, "--json"]).run_id();
    let out = env.dive(&["runs", "show", &id, "--events"]);
    out.assert_code(0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    let at = |what: &str| {
        lines
            .iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no `{what}` in:\n{}", out.stdout))
    };
    assert_eq!(at("run of `flaky` started"), 0);
    assert!(at("first: attempt 1 started") < at("first: attempt 1 succeeded"));
    assert!(at("first: attempt 1 succeeded") <= at("flaky: attempt 1 started"));
    assert!(at("flaky: attempt 1 failed:") < at("flaky: attempt 2 started, "));
    assert!(lines[at("flaky: attempt 2 started, ")].contains("after attempt 1 failed ("));
    assert!(at("flaky: attempt 2 succeeded") < at("run succeeded"));
    assert_eq!(at("run succeeded"), lines.len() - 1);
    let doc = env
        .dive(&["runs", "show", &id, "--events", "--json"])
        .json();
    let events = doc["events"].as_array().unwrap();
    assert_eq!(events.len(), lines.len());
    assert_eq!(events[1]["phase"], "first");
}
