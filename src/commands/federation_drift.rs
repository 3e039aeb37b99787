//! `dive federation drift CODE`: the three-layer drift check of the pair hub–CODE
//! ([`dive_phases::federation::drift`]); reports, never changes anything.

use crate::commands::federation_link::{Federated, federated};
use crate::commands::print_json;
use crate::commands::secrets::Access;
use crate::{database, exit, services};
use anyhow::{Context, Result};
use dive_instances::InstanceRecord;
use dive_phases::federation::drift::{self, Side};

async fn side(rec: InstanceRecord) -> Side {
    let runtime = services::runtime(rec.runtime)
        .await
        .map_err(|e| format!("{e:#}"));
    Side { rec, runtime }
}

pub async fn drift(code: &str, json: bool) -> Result<u8> {
    let Federated { hub, spoke, .. } = federated(code).await?;
    let store = database::open().await?;
    let Access { secrets, trust } = Access::open(&store).await?;
    secrets
        .verify_key()
        .await
        .context("checking the master key")?;
    if !json {
        note!(
            "checking {} ↔ {}: runtime, configuration, one login each way…",
            hub.code,
            spoke.code
        );
    }
    let report = drift::detect(&secrets, &trust, &side(hub).await, &side(spoke).await).await;
    if json {
        print_json(&report)?;
    } else {
        for f in &report.findings {
            println!(
                "{:<7}  {}  {}: {}",
                serde_json::to_value(f.layer)?.as_str().unwrap_or_default(),
                f.instance,
                f.object,
                f.difference
            );
        }
        for l in &report.live {
            println!(
                "live     {} → {}  {} ({} ms)",
                l.from,
                l.to,
                if l.ok { "ok" } else { "FAILED" },
                l.latency_ms
            );
        }
        if report.drifted {
            println!(
                "federation {} ↔ {}: DRIFTED ({} findings); repair with `dive federation link {}`",
                report.hub,
                report.spoke,
                report.findings.len(),
                report.spoke
            );
        } else {
            println!("federation {} ↔ {}: no drift", report.hub, report.spoke);
        }
    }
    Ok(if report.drifted {
        exit::RUN_FAILED
    } else {
        exit::OK
    })
}
