//! `dive status`: everything at a glance — instances with their services' health, links with
//! each direction's last verification, open breakers, and runs going on or orphaned.

use crate::commands::federation_verify::LastVerification;
use crate::commands::instance::{StatusView, status_text, status_view};
use crate::commands::print_json;
use crate::commands::secrets::Access;
use crate::{config, database, exit};
use anyhow::Result;
use chrono::{DateTime, Utc};
use dive_engine::store::RunSummary;
use serde::Serialize;

#[derive(Serialize)]
struct Direction {
    from: String,
    to: String,
    last: Option<LastVerification>,
    last_success: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
struct Breaker {
    breaker: String,
    state: String,
    since: DateTime<Utc>,
    run_id: uuid::Uuid,
}

#[derive(Serialize)]
struct Status {
    instances: Vec<StatusView>,
    links: Vec<Direction>,
    breakers: Vec<Breaker>,
    runs: Vec<RunSummary>,
}

pub async fn status(json: bool) -> Result<u8> {
    let store = database::open().await?;
    let pool = store.pool();
    let mut instances = Vec::new();
    let access = Access::open(&store).await?;
    for rec in config::get().instances(&store).list().await? {
        instances.push(status_view(rec.role, &rec.code, Some(&rec), &access).await);
    }
    let mut links = Vec::new();
    for (hub, spoke, _, _) in dive_verify::links(pool).await? {
        for (from, to) in [(&hub, &spoke), (&spoke, &hub)] {
            links.push(Direction {
                last: LastVerification::latest(pool, from, to).await?,
                last_success: dive_verify::last_success(pool, from, to).await?,
                from: from.clone(),
                to: to.clone(),
            });
        }
    }
    let breakers = store
        .open_breakers()
        .await?
        .into_iter()
        .map(|(breaker, state, since, run_id)| Breaker {
            breaker,
            state,
            since,
            run_id,
        })
        .collect();
    let runs = store
        .list_runs(1000)
        .await?
        .into_iter()
        .filter(|r| r.state.is_active())
        .collect();
    let status = Status {
        instances,
        links,
        breakers,
        runs,
    };
    if json {
        print_json(&status)?;
    } else {
        print!("{}", text(&status));
    }
    Ok(exit::OK)
}

fn when(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn text(s: &Status) -> String {
    let mut out = String::from("Instances\n");
    if s.instances.is_empty() {
        out += "  none deployed (dive hub deploy)\n";
    }
    for v in &s.instances {
        for line in status_text(v).lines() {
            out += &format!("  {line}\n");
        }
    }
    out += "Federation\n";
    if s.links.is_empty() {
        out += "  no links (dive federation link CODE)\n";
    }
    for d in &s.links {
        let last = match &d.last {
            Some(v) if v.ok => format!("ok      {} ({} ms)", when(&v.verified_at), v.latency_ms),
            Some(v) => format!(
                "FAILING {}{}; last good {}",
                when(&v.verified_at),
                v.error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default(),
                d.last_success.as_ref().map_or("never".into(), when)
            ),
            None => "never verified".into(),
        };
        out += &format!("  {} → {}  {last}\n", d.from, d.to);
    }
    out += "Breakers\n";
    if s.breakers.is_empty() {
        out += "  none open\n";
    }
    for b in &s.breakers {
        out += &format!(
            "  {}  {} since {} (run {})\n",
            b.breaker,
            b.state,
            when(&b.since),
            b.run_id
        );
    }
    out += "Runs going on\n";
    if s.runs.is_empty() {
        out += "  none\n";
    }
    for r in &s.runs {
        out += &format!(
            "  {}  {}  {} since {}{}\n",
            r.id,
            r.workflow,
            r.state.as_str(),
            when(&r.started_at),
            if r.orphaned {
                "  ORPHANED: no process holds its locks (dive resume it)"
            } else {
                ""
            }
        );
    }
    out
}
