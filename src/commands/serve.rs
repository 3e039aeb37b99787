//! `dive serve`: a long-running exporter. `/metrics` shows the state database in the OpenMetrics
//! format (runs made by any dive process count: everything is read at scrape time), `/healthz`
//! says whether the state database answers, and a heartbeat verifies every linked pair as an
//! ordinary recorded `federation-verify` run. Stops cleanly on SIGTERM or Ctrl-C. What it
//! says goes to the log (info level, shown by default; JSON lines with `--log-format json`).

use crate::commands::federation_verify::verify_pair;
use crate::commands::instance::services_of;
use crate::commands::secrets::Access;
use crate::{InvalidInput, config, database, exit};
use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dive_engine::{EngineError, Store};
use dive_metrics::{Exporter, Format, ServiceUp};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often instance services' health is checked for `dive_instance_service_up`.
const HEALTH_EVERY: Duration = Duration::from_secs(15);

#[derive(Clone)]
struct Shared {
    store: Store,
    /// The dive CA: Keycloak's health is checked over HTTPS.
    trust: dive_tls::Trust,
    exporter: Arc<Exporter>,
    services: Arc<RwLock<Vec<ServiceUp>>>,
}

pub async fn serve(listen: &str, heartbeat: &str) -> Result<u8> {
    let addr: SocketAddr = listen.parse().map_err(|e| {
        InvalidInput(format!(
            "--listen `{listen}`: expected IP:PORT such as 127.0.0.1:9464 ({e})"
        ))
    })?;
    let heartbeat = match heartbeat {
        "off" | "0" => None,
        h => Some(humantime::parse_duration(h).map_err(|e| {
            InvalidInput(format!(
                "--heartbeat `{h}`: expected a duration such as 60s, or off ({e})"
            ))
        })?),
    };
    let store = database::open().await?;
    let shared = Shared {
        trust: Access::open(&store).await?.trust,
        exporter: Arc::new(Exporter::new(store.pool().clone())),
        store: store.clone(),
        services: Arc::default(),
    };
    // The first scrape of an exporter reads the whole history (what has settled is kept from
    // then on): do it now rather than make Prometheus's first scrape wait for it.
    if let Err(e) = shared.exporter.scrape(&[], Format::Text).await {
        tracing::warn!("dive serve: {e}");
    }
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal(stop.clone()));
    let health = tokio::spawn(check_health(shared.clone(), stop.clone()));
    let beats = heartbeat.map(|every| tokio::spawn(beat(store.clone(), every, stop.clone())));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(shared);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    tracing::info!(
        "dive serve: metrics on http://{addr}/metrics, health on http://{addr}/healthz, heartbeat {}",
        heartbeat.map_or("off".into(), |h| humantime::format_duration(h).to_string())
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .await
        .context("serving HTTP")?;
    health.abort();
    if let Some(beats) = beats {
        // A verification under way finishes (or is interrupted by the same signal) first.
        let _ = beats.await;
    }
    tracing::info!("dive serve: stopped");
    Ok(exit::OK)
}

async fn metrics(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let services = s.services.read().expect("health lock").clone();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    match s.exporter.scrape(&services, format).await {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn healthz(State(s): State<Shared>) -> Response {
    match sqlx::query("SELECT 1").execute(s.store.pool()).await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("state database: {e}\n"),
        )
            .into_response(),
    }
}

/// Every [`HEALTH_EVERY`]: each registered instance's services, as `dive status` reports them.
async fn check_health(s: Shared, stop: CancellationToken) {
    let registry = config::get().instances(&s.store);
    loop {
        let mut up = Vec::new();
        if let Ok(instances) = registry.list().await {
            for rec in instances {
                for h in services_of(&rec, &s.trust).await {
                    up.push(ServiceUp {
                        code: rec.code.clone(),
                        up: h.is_ok(),
                        service: h.name,
                    });
                }
            }
        }
        *s.services.write().expect("health lock") = up;
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Every `every`: `federation-verify` for each linked pair, one after another, each an ordinary
/// recorded run under its lock. A pair whose lock another run holds is skipped, and said so.
async fn beat(store: Store, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let links = match dive_verify::links(store.pool()).await {
            Ok(links) => links,
            Err(e) => {
                tracing::warn!("heartbeat: {e}");
                continue;
            }
        };
        for (hub, spoke, _, _) in links {
            if stop.is_cancelled() {
                return;
            }
            match verify_pair(&spoke).await {
                Ok(v) => {
                    let dirs: Vec<String> = v
                        .directions
                        .iter()
                        .map(|d| {
                            format!(
                                "{} → {} {}",
                                d.from,
                                d.to,
                                if d.ok { "ok" } else { "FAILED" }
                            )
                        })
                        .collect();
                    tracing::info!(
                        "heartbeat: {hub} ↔ {spoke}: {} (run {})",
                        dirs.join(", "),
                        v.run_id
                    );
                }
                Err(e) => match e.downcast_ref::<EngineError>() {
                    Some(EngineError::LockHeld { key, holder }) => tracing::info!(
                        "heartbeat: {hub} ↔ {spoke}: skipped, lock `{key}` is held by run {}",
                        holder.map_or("(unknown)".into(), |h| h.to_string())
                    ),
                    _ => tracing::warn!("heartbeat: {hub} ↔ {spoke}: {e:#}"),
                },
            }
        }
    }
}

async fn stop_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("dive serve: stopping");
    stop.cancel();
}
