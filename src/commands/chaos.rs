//! `dive chaos`: runs the chaos suite (crate dive-chaos) with this very binary as the `dive`
//! under test.

use crate::cli::ChaosCommand;
use crate::commands::print_json;
use crate::{InvalidInput, config, exit};
use anyhow::{Context, Result};
use dive_chaos::{Family, Options, report, scenarios};

pub async fn chaos(cmd: ChaosCommand) -> Result<u8> {
    match cmd {
        ChaosCommand::List { json } => {
            let list: Vec<serde_json::Value> = scenarios::catalogue()
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "scenario": s.name, "family": s.family, "pipeline": s.pipeline,
                        "fault": s.fault, "expect": s.expect, "ci": s.ci,
                    })
                })
                .collect();
            if json {
                print_json(&list)?;
            } else {
                for s in scenarios::catalogue() {
                    let ci = if s.ci { "ci" } else { "  " };
                    println!(
                        "{:<44} {:<9} {ci}  {}",
                        s.name,
                        s.family.to_string(),
                        s.fault
                    );
                }
            }
            Ok(exit::OK)
        }
        ChaosCommand::Run {
            scenarios,
            families,
            ci,
            seed,
            port_base,
            toxiproxy,
            json,
            keep,
        } => {
            let families = families
                .iter()
                .map(|f| f.parse::<Family>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| InvalidInput(format!("--family: {e}")))?;
            let cache = config::get().runtimes.keycloak.cache.clone();
            let options = Options {
                dive: std::env::current_exe().context("locating this dive binary")?,
                toxiproxy: toxiproxy.unwrap_or_else(|| cache.join("tools/toxiproxy-server")),
                cache: Some(cache),
                port_base,
                seed,
                scenarios,
                families,
                ci,
                keep,
            };
            dive_chaos::select(&options).map_err(|e| InvalidInput(e.to_string()))?;
            let reports = tokio::task::spawn_blocking(move || {
                dive_chaos::run(
                    &options,
                    |name| eprintln!("chaos: {name} …"),
                    |r| match r.why_failed() {
                        None => eprintln!("chaos: {} passed", r.scenario),
                        Some(why) => eprintln!("chaos: {} FAILED: {why}", r.scenario),
                    },
                )
            })
            .await??;
            if json {
                print_json(&report::json(&reports, seed))?;
            } else {
                print!("{}", report::table(&reports, seed));
            }
            Ok(if reports.iter().all(|r| r.passed()) {
                exit::OK
            } else {
                exit::RUN_FAILED
            })
        }
    }
}
