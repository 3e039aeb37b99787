//! `dive bench engine`: engine overhead against the configured state database, as JSON.

use crate::cli::{BenchCommand, ExecArgs};
use crate::commands::federation_link::{Federated, federated};
use crate::commands::print_json;
use crate::commands::run::start_named;
use crate::commands::secrets::Access;
use crate::{InvalidInput, config};
use crate::{database, exit};
use anyhow::{Context, Result, bail};
use dive_engine::{Engine, RunOptions, RunState, Workflow};
use dive_instances::normalize_code;
use dive_keycloak::{test_users, user_password_secret};
use dive_phases::rotation;
use dive_verify::probe::{Login, Password, Probe};
use dive_verify::{Endpoint, brokered_login};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn bench(cmd: BenchCommand) -> Result<u8> {
    match cmd {
        BenchCommand::Engine {
            chain,
            parallel,
            concurrency,
        } => engine(chain, parallel, concurrency).await,
        BenchCommand::Federation { code, logins } => federation(&code, logins).await,
        BenchCommand::Metrics {
            runs,
            scrapes,
            heartbeat_for,
        } => crate::commands::bench_metrics::metrics(runs, scrapes, heartbeat_for).await,
        BenchCommand::Rotation {
            code,
            kinds,
            grace,
            workers,
            ..
        } => rotation(code.as_deref(), &kinds, &grace, workers).await,
    }
}

async fn engine(chain: usize, parallel: usize, concurrency: usize) -> Result<u8> {
    let engine = Engine::new(database::open().await?);
    let tag = uuid::Uuid::now_v7().simple().to_string();

    let mut yaml = format!("name: bench-chain\nlock: \"bench:{tag}:chain\"\nphases:\n");
    for i in 0..chain {
        let _ = writeln!(
            yaml,
            "  - {{ id: p{i}, type: noop{} }}",
            if i > 0 {
                format!(", after: [p{}]", i - 1)
            } else {
                String::new()
            }
        );
    }
    let (chain_wall, run_id) = timed_run(&engine, &yaml, 1).await?;
    // The floor: as many durable one-row commits, right after, on the same database.
    let floor = engine
        .store()
        .commit_floor(chain.max(1), Duration::ZERO)
        .await?;
    let floor_ms = mean_ms(&floor);
    let per_phase_ms = chain_wall / chain.max(1) as f64;
    let run = engine.store().load_run(run_id).await?;
    let mut steps: Vec<f64> = run
        .phases
        .windows(2)
        .filter_map(|w| {
            Some((w[1].finished_at? - w[0].finished_at?).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    steps.sort_by(f64::total_cmp);

    let mut yaml = format!("name: bench-parallel\nlock: \"bench:{tag}:parallel\"\nphases:\n");
    for i in 0..parallel {
        let _ = writeln!(
            yaml,
            "  - {{ id: s{i}, type: sleep, duration: {}ms }}",
            SLEEP_PHASE.as_millis()
        );
    }
    let (parallel_wall, _) = timed_run(&engine, &yaml, concurrency).await?;
    let ideal_ms = (parallel.div_ceil(concurrency.max(1)) as u128 * SLEEP_PHASE.as_millis()) as f64;
    // Each wave of the fan starts with a commit after 100 ms without one: what that costs on
    // this machine explains a fan further from ideal than the back-to-back floor suggests.
    let idle_floor_ms = mean_ms(
        &engine
            .store()
            .commit_floor(IDLE_COMMITS, SLEEP_PHASE)
            .await?,
    );

    print_json(&json!({
        "chain": {
            "phases": chain,
            "wall_ms": round(chain_wall),
            "per_phase_ms": round(per_phase_ms),
            "median_step_ms": round(percentile(&steps, 0.5).unwrap_or(0.0)),
            "p95_step_ms": round(percentile(&steps, 0.95).unwrap_or(0.0)),
        },
        "floor": {
            "what": "one durable single-row upsert commit, same database and connection settings",
            "commits": floor.len(),
            "per_commit_ms": round(floor_ms),
            "per_phase_to_floor": round(per_phase_ms / floor_ms),
            "after_100ms_idle_ms": round(idle_floor_ms),
        },
        "parallel": {
            "phases": parallel,
            "concurrency": concurrency,
            "wall_ms": round(parallel_wall),
            "ideal_ms": ideal_ms,
            "ratio_to_ideal": round(parallel_wall / ideal_ms),
        },
        "peak_rss_mb": peak_rss_mb("self")?,
    }))?;
    Ok(exit::OK)
}

/// Times a link from nothing, single logins and a full verification of the pair hub–`code`.
async fn federation(code: &str, logins: usize) -> Result<u8> {
    let Federated {
        hub,
        spoke,
        exec,
        params,
    } = federated(code).await?;
    let mut timed = BTreeMap::new();
    for workflow in ["federation-unlink", "federation-link", "federation-verify"] {
        let start = Instant::now();
        let (_, outcome) = start_named(workflow, &params, false, &exec).await?;
        if outcome.state != RunState::Succeeded {
            bail!(
                "{workflow} (run {}) ended {}",
                outcome.run_id,
                outcome.state
            );
        }
        timed.insert(workflow, round(start.elapsed().as_secs_f64() * 1000.0));
    }
    let store = database::open().await?;
    let Access { secrets, trust } = Access::open(&store).await?;
    let (from, to) = (Endpoint::from(&hub), Endpoint::from(&spoke));
    let user = &test_users(&hub.code)[0].username;
    let password = secrets
        .get(&user_password_secret(&hub.code, user))
        .await?
        .context("the test user's password is not in the store")?
        .0;
    let mut ms = Vec::new();
    for _ in 0..logins {
        let login = brokered_login(&trust, &from, &to, user, password.expose()).await?;
        ms.push(login.latency.as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    let pick = |q: f64| percentile(&ms, q).map(round);
    let verified = verify_latest(&store, &hub.code, &spoke.code).await?;
    print_json(&json!({
        "pair": format!("{}-{}", hub.code, spoke.code),
        "link_ms": timed["federation-link"],
        "unlink_ms": timed["federation-unlink"],
        "verify_run_ms": timed["federation-verify"],
        "verify_directions": verified,
        "login_ms": {
            "user": user,
            "logins": ms.len(),
            "median": pick(0.5),
            "p95": pick(0.95),
            "max": ms.last().copied().map(round),
        },
    }))?;
    Ok(exit::OK)
}

/// With a code: rotates each of `kinds` of that instance in turn, a probe running over its
/// links. With none (`--all`): one `secret-rotation-all` run of all `kinds` together, the probe
/// covering every link.
async fn rotation(code: Option<&str>, kinds: &[String], grace: &str, workers: usize) -> Result<u8> {
    let code = code.map(normalize_code).transpose().map_err(InvalidInput)?;
    let mut kinds = kinds.to_vec();
    if kinds.is_empty() {
        kinds = ["federation", "signing-key", "admin"]
            .map(String::from)
            .to_vec();
        if code.is_some() {
            kinds.push("users".into());
        }
    }
    for kind in &kinds {
        rotation::check_kinds(kind).map_err(InvalidInput)?;
    }
    if code.is_none() && kinds.iter().any(|k| k == "users") {
        return Err(InvalidInput(
            "--kind users with --all: every probed login's password would change; leave it out"
                .into(),
        )
        .into());
    }
    let store = database::open().await?;
    let registry = config::get().instances(&store);
    // The instances probed and the links (pairs of codes) between them.
    let mut instances = Vec::new();
    let mut links = Vec::new();
    let codes = match &code {
        Some(code) => vec![code.clone()],
        None => registry.list().await?.into_iter().map(|r| r.code).collect(),
    };
    for x in &codes {
        let rec = registry.get(x).await?.ok_or_else(|| {
            InvalidInput(format!(
                "instance {x} is not deployed (deploy and link it first)"
            ))
        })?;
        instances.push(rec);
        for p in rotation::partners(store.pool(), x)
            .await
            .map_err(anyhow::Error::msg)?
        {
            if code.is_some() || x < &p {
                links.push((x.clone(), p));
            }
        }
    }
    if links.is_empty() {
        bail!("no federation link to probe: link the instances first (`dive federation link`)");
    }
    for (_, p) in &links {
        if !instances.iter().any(|r| &r.code == p) {
            instances.push(
                registry
                    .get(p)
                    .await?
                    .context("a linked instance is not registered")?,
            );
        }
    }
    let Access { secrets, trust } = Access::open(&store).await?;
    let secrets = Arc::new(secrets);
    let rec_of = |c: &str| {
        instances
            .iter()
            .find(|r| r.code == c)
            .expect("registered above")
    };
    let user_of = |x: &dive_instances::InstanceRecord| {
        let user = test_users(&x.code)[0].username.clone();
        let password = Password::stored(secrets.clone(), user_password_secret(&x.code, &user));
        (Endpoint::from(x), user, password)
    };
    let mut logins = Vec::new();
    for (a, b) in &links {
        for (x, target) in [(rec_of(a), rec_of(b)), (rec_of(b), rec_of(a))] {
            let (home, user, password) = user_of(x);
            logins.push(Login::Brokered {
                home,
                target: Endpoint::from(target),
                user,
                password,
            });
        }
    }
    for x in &instances {
        let (at, user, password) = user_of(x);
        logins.push(Login::Direct { at, user, password });
    }
    let exec = ExecArgs {
        json: false,
        concurrency: 8,
        runtime: Some(instances[0].runtime),
        dry_run: false,
    };
    // One run per kind for an instance; one run of every kind for `--all`.
    let runs: Vec<String> = match &code {
        Some(_) => kinds.clone(),
        None => vec![kinds.join(",")],
    };
    let mut results = Vec::new();
    for only in runs {
        let probed: Vec<Login> = logins
            .iter()
            .filter(|l| only != "users" || Some(&l.home().code) != code.as_ref())
            .cloned()
            .collect();
        // Each login once, one at a time, before the probe counts: a user's first brokered
        // login creates and links its account at the target, and two of those side by side
        // collide (the second is asked to sign in at the target) — not what is measured here.
        let warm = probed.len() as u64;
        let primer = Probe::start(&trust, probed.clone(), 1);
        tokio::task::spawn_blocking(move || {
            primer.wait_for(warm, std::time::Duration::from_secs(60));
            primer.stop()
        })
        .await?;
        let probe = Probe::start(&trust, probed.clone(), workers);
        let probe = tokio::task::spawn_blocking(move || {
            probe.wait_for(warm, std::time::Duration::from_secs(60));
            probe
        })
        .await?;
        let mut params = BTreeMap::from([
            ("only".to_string(), only.clone()),
            ("grace".to_string(), grace.to_string()),
        ]);
        let workflow = match &code {
            Some(code) => {
                params.insert("code".to_string(), code.clone());
                "secret-rotation"
            }
            None => "secret-rotation-all",
        };
        let start = Instant::now();
        let (_, outcome) = start_named(workflow, &params, false, &exec).await?;
        let took = start.elapsed();
        let report = tokio::task::spawn_blocking(move || probe.stop()).await?;
        results.push(json!({
            "kind": only,
            "state": outcome.state,
            "run_id": outcome.run_id,
            "duration_ms": round(took.as_secs_f64() * 1000.0),
            "probe": report.to_json(),
        }));
    }
    let scope = code.unwrap_or_else(|| "all".to_string());
    print_json(&json!({ "code": scope, "grace": grace, "rotations": results }))?;
    Ok(exit::OK)
}

/// The latest verification of both directions: `[{from, to, ok, latency_ms}]`.
async fn verify_latest(
    store: &dive_engine::Store,
    hub: &str,
    spoke: &str,
) -> Result<serde_json::Value> {
    let mut out = Vec::new();
    for (from, to) in [(hub, spoke), (spoke, hub)] {
        if let Some((_, ok, latency_ms, _)) = dive_verify::latest(store.pool(), from, to).await? {
            out.push(json!({"from": from, "to": to, "ok": ok, "latency_ms": latency_ms}));
        }
    }
    Ok(serde_json::Value::Array(out))
}

pub(crate) fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn timed_run(engine: &Engine, yaml: &str, concurrency: usize) -> Result<(f64, uuid::Uuid)> {
    let plan = Workflow::parse("bench (generated)", yaml)?.plan(&BTreeMap::new())?;
    let opts = RunOptions {
        concurrency,
        ..RunOptions::default()
    };
    let start = Instant::now();
    let outcome = engine.start(&plan, &opts).await?;
    let wall = start.elapsed().as_secs_f64() * 1000.0;
    if outcome.state != RunState::Succeeded {
        bail!("benchmark run {} ended {}", outcome.run_id, outcome.state);
    }
    Ok((wall, outcome.run_id))
}

/// The fan's phases sleep this long each.
const SLEEP_PHASE: Duration = Duration::from_millis(100);

/// Commits after [`SLEEP_PHASE`] of idle time that `bench engine` times.
const IDLE_COMMITS: usize = 10;

/// The value at quantile `q` (0 to 1, nearest rank) of `sorted`; `None` when it is empty.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get((last as f64 * q).round() as usize).copied()
}

/// The mean of `times`, in milliseconds.
fn mean_ms(times: &[Duration]) -> f64 {
    times.iter().map(|d| d.as_secs_f64() * 1000.0).sum::<f64>() / times.len().max(1) as f64
}

/// Peak resident set size (VmHWM) of process `pid` (`self`: this one).
pub(crate) fn peak_rss_mb(pid: &str) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM in {path}"))?;
    Ok(round(kb / 1024.0))
}
