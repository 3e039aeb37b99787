//! `dive bench metrics`: what `/metrics` costs on a large state database, and what `dive serve`
//! costs at rest and per heartbeat.

use crate::commands::bench::{peak_rss_mb, percentile, round};
use crate::commands::print_json;
use crate::{database, exit};
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Rows written into the scratch database, relative to `runs`.
const PHASES_PER_RUN: u32 = 8;

pub async fn metrics(runs: u32, scrapes: usize, heartbeat_for: u64) -> Result<u8> {
    let store = database::open().await?;
    let name = format!("dive_bench_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(store.pool())
        .await
        .with_context(|| {
            format!("creating the scratch database {name} (the role needs CREATEDB)")
        })?;
    let url = with_database(store.url(), &name)?;
    let result = measure(&url, runs, scrapes).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(store.pool())
    .await;
    let mut doc = result?;
    if heartbeat_for > 0 {
        doc["heartbeat"] = heartbeat_cpu(&store, heartbeat_for).await?;
    }
    print_json(&doc)?;
    Ok(exit::OK)
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> Result<String> {
    let mut u = reqwest::Url::parse(url).context("the state database URL")?;
    u.set_path(&format!("/{name}"));
    Ok(u.to_string())
}

async fn measure(url: &str, runs: u32, scrapes: usize) -> Result<serde_json::Value> {
    let store = dive_engine::Store::open_with(url, &database::MIGRATORS).await?;
    let pool = store.pool();
    let started = Instant::now();
    fill(pool, runs).await?;
    let fill_s = started.elapsed().as_secs_f64();
    sqlx::query("VACUUM ANALYZE").execute(pool).await?;

    // The first scrape of an exporter reads the whole history; later ones what is still live.
    let exporter = dive_metrics::Exporter::new(pool.clone());
    let format = dive_metrics::Format::OpenMetrics;
    let t = Instant::now();
    exporter.scrape(&[], format).await?;
    let first_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..scrapes.max(1) {
        let t = Instant::now();
        let text = exporter.scrape(&[], format).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = text.len();
    }
    times.sort_by(f64::total_cmp);
    // At least one scrape was timed.
    let pick = |q: f64| percentile(&times, q).unwrap_or_default();

    // A real `dive serve` on the same database, scraped as often: its peak resident set.
    let port = free_port()?;
    let mut serve = spawn_serve(url, port, "off")?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_ready(&client, &base).await?;
    for _ in 0..scrapes.max(1) {
        client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
    }
    let rss_mb = peak_rss_mb(&serve.id().to_string())?;
    let _ = serve.kill();
    let _ = serve.wait();
    Ok(json!({
        "runs": runs,
        "phases": runs * PHASES_PER_RUN,
        "fill_s": round(fill_s),
        "first_scrape_ms": round(first_ms),
        "scrape_ms": { "scrapes": times.len(), "median": round(pick(0.5)), "p95": round(pick(0.95)), "max": round(pick(1.0)) },
        "scrape_bytes": bytes,
        "serve_peak_rss_mb": round(rss_mb),
        "targets": { "scrape_ms": 50, "serve_rss_mb": 50 },
    }))
}

/// Synthetic history in the scratch database: `runs` runs of six workflows (one in fifty failed, one in a hundred
/// rolled back), eight phases each, a verification per run with three users, a breaker event
/// per hundred runs, and three versions of fifty secrets (random bytes: ages are all a scrape
/// reads of them).
async fn fill(pool: &sqlx::PgPool, runs: u32) -> Result<()> {
    let mut tx = pool.begin().await?;
    // History is written as it ended, not lived through: the transition triggers (which guard
    // live runs) stay out of it. Needs a superuser, which the embedded cluster's role is.
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .context("the scratch database needs a superuser connection")?;
    for sql in [
        "INSERT INTO runs (id, workflow, lock_key, lock_keys, state, params, plan, started_at, finished_at) \
         SELECT gen_random_uuid(), \
                (ARRAY['hub-deploy','spoke-deploy','federation-link','federation-verify','secret-rotation','quickstart'])[1 + g % 6], \
                'bench:' || g, ARRAY['bench:' || g], \
                CASE WHEN g % 100 = 0 THEN 'rolled_back' WHEN g % 50 = 0 THEN 'failed' ELSE 'succeeded' END, \
                '{}', '{}', now() - make_interval(secs => g * 10), now() - make_interval(secs => g * 10 - 5 - g % 60) \
         FROM generate_series(1, $1) g",
        "INSERT INTO phases (run_id, phase_id, phase_type, state, attempt, started_at, finished_at, output) \
         SELECT r.id, 'p' || i, (ARRAY['instance.ensure','keycloak.realm','federation.verify','noop'])[1 + i % 4], \
                'succeeded', 1 + (i = 3 AND r.state <> 'succeeded')::int, r.started_at, r.started_at + make_interval(secs => i), '{}' \
         FROM runs r, generate_series(1, 8) i",
        "INSERT INTO federation_verifications (run_id, source, target, ok, latency_ms, users, verified_at) \
         SELECT id, (ARRAY['USA','FRA','GBR'])[1 + n % 3], (ARRAY['FRA','GBR','USA'])[1 + n % 3], \
                state = 'succeeded', 500 + n % 2000, \
                '[{\"username\":\"a\",\"ok\":true},{\"username\":\"b\",\"ok\":true},{\"username\":\"c\",\"ok\":true}]', \
                finished_at \
         FROM (SELECT id, state, finished_at, row_number() OVER () AS n FROM runs) r",
        "INSERT INTO breaker_events (run_id, breaker, transition, at) \
         SELECT id, 'keycloak:' || (ARRAY['usa','fra','gbr'])[1 + n % 3], (ARRAY['open','half_open','closed'])[1 + n % 3], started_at \
         FROM (SELECT id, started_at, row_number() OVER () AS n FROM runs) r WHERE n % 100 = 0",
        "INSERT INTO secrets (name, version, nonce, ciphertext, created_at) \
         SELECT 'bench/secret-' || s, v, substring(decode(md5(random()::text), 'hex') FROM 1 FOR 12), decode(md5(random()::text) || md5(random()::text), 'hex'), now() - make_interval(days => 30 * (4 - v)) \
         FROM generate_series(1, 50) s, generate_series(1, 3) v",
    ] {
        let q = sqlx::query(sql);
        let q = if sql.contains("$1") {
            q.bind(runs as i32)
        } else {
            q
        };
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Runs a `dive serve` on the same database with a 5 s heartbeat for `seconds` and returns its
/// own CPU time per heartbeat, and that as a share of one core at a 60 s heartbeat.
async fn heartbeat_cpu(store: &dive_engine::Store, seconds: u64) -> Result<serde_json::Value> {
    let links = dive_verify::links(store.pool()).await?;
    if links.is_empty() {
        return Ok(json!({ "skipped": "no linked instances in the state database" }));
    }
    let port = free_port()?;
    let mut serve = spawn_serve(store.url(), port, "5s")?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu_s = cpu_seconds(serve.id())?;
    let wall = started.elapsed().as_secs_f64();
    let _ = serve.kill();
    let _ = serve.wait();
    let beats = (wall / 5.0).ceil().max(1.0);
    let per_beat = cpu_s / beats;
    Ok(json!({
        "pairs": links.len(),
        "seconds": round(wall),
        "heartbeats": beats,
        "cpu_s": round(cpu_s),
        "cpu_s_per_heartbeat": round(per_beat),
        "core_percent_at_60s": round(per_beat / 60.0 * 100.0),
        "target_core_percent": 2,
    }))
}

fn spawn_serve(url: &str, port: u16, heartbeat: &str) -> Result<Child> {
    Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--heartbeat",
            heartbeat,
        ])
        .env("DIVE_DATABASE_URL", url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting dive serve")
}

async fn wait_ready(client: &reqwest::Client, base: &str) -> Result<()> {
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("dive serve did not answer on {base}")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// User and system CPU seconds of process `pid` (fields 14 and 15 of /proc/PID/stat).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("/proc/PID/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}
