//! dive's chaos suite: real faults — network, partitions, the state database, processes,
//! secrets — injected into real runs of every pipeline on real PostgreSQL and Keycloak, and the
//! invariants that must hold once the fault is healed.
//!
//! A run builds one [`world::World`] (a state database of its own behind a toxiproxy, its own
//! DIVE_HOME and ports), then runs each selected [`scenarios::Scenario`] in catalogue order: the
//! world is brought to the state the scenario needs (no instance, a hub, a linked hub and spoke),
//! the scenario starts its pipeline with the real `dive` binary, injects its fault at a point the
//! seed picks, heals it and drives the run to its end (a `dive resume` where the promise is that
//! one is enough). [`invariants`] then checks what must always hold, and [`report`] prints the
//! table. Instances are reset at the end, whatever happened.

pub mod faults;
pub mod invariants;
pub mod proxy;
pub mod report;
pub mod scenarios;
pub mod world;

use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Why a chaos run could not run at all (a scenario that fails is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("setting up the chaos world: {0}")]
    Setup(String),
    #[error("unknown scenario `{0}` (`dive chaos list` shows the catalogue)")]
    UnknownScenario(String),
    #[error(
        "unknown fault family `{0}`: expected network, partition, database, process or secrets"
    )]
    UnknownFamily(String),
}

/// The fault families of the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// toxiproxy toxics and a disabled proxy on a link.
    Network,
    /// iptables DROP / REJECT of a loopback port or inside a container's network namespace, a
    /// container disconnected from its network.
    Partition,
    /// The state database stopped, its backends terminated, read-only.
    Database,
    /// kill -9, SIGSTOP / SIGCONT of dive, of the services it started and of the state
    /// database; `docker kill` and `docker pause` of containers.
    Process,
    /// The master key missing or wrong, a secret deleted from the store.
    Secrets,
}

impl std::str::FromStr for Family {
    type Err = ChaosError;
    fn from_str(s: &str) -> Result<Self, ChaosError> {
        Ok(match s {
            "network" => Family::Network,
            "partition" => Family::Partition,
            "database" => Family::Database,
            "process" => Family::Process,
            "secrets" => Family::Secrets,
            other => return Err(ChaosError::UnknownFamily(other.to_string())),
        })
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
        f.write_str(text.as_str().unwrap_or_default())
    }
}

/// How a scenario's pipeline run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The run succeeded (by itself, or after one `dive resume`).
    Converged,
    /// The run rolled back and left nothing behind.
    RolledBack,
    /// Anything else: the promise was broken.
    #[serde(rename = "FAILED")]
    Failed,
}

/// What the runner is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `dive` binary every scenario runs.
    pub dive: PathBuf,
    /// DIVE_CACHE for the runs (the Keycloak distribution is built once there).
    pub cache: Option<PathBuf>,
    /// The toxiproxy server binary.
    pub toxiproxy: PathBuf,
    /// DIVE_PORT_BASE of the chaos world's instances.
    pub port_base: u16,
    /// Seeds every scenario's schedule: the same seed, the same schedule.
    pub seed: u64,
    /// Scenario names to run (empty: as `families` and `ci` select).
    pub scenarios: Vec<String>,
    pub families: Vec<Family>,
    /// Only the CI selection.
    pub ci: bool,
    /// Leave the world as the last scenario left it (instances, state database) to look into.
    pub keep: bool,
}

/// One invariant's result.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub invariant: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// One scenario's line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    pub scenario: &'static str,
    pub family: Family,
    pub pipeline: &'static str,
    pub fault: &'static str,
    /// Where and when the fault was injected (phase, delay, duration), as the seed chose.
    pub injected: Vec<String>,
    pub outcome: Outcome,
    /// From healing the fault to the run's end.
    pub recovery_ms: Option<u64>,
    pub elapsed_ms: u64,
    pub invariants: Vec<Check>,
    /// Why the scenario FAILED, when it did.
    pub error: Option<String>,
}

impl ScenarioReport {
    pub fn passed(&self) -> bool {
        self.outcome != Outcome::Failed && self.invariants.iter().all(|c| c.ok)
    }

    /// Why it FAILED (its error and each broken invariant), for a progress line.
    pub fn why_failed(&self) -> Option<String> {
        let reasons: Vec<String> = self
            .error
            .iter()
            .cloned()
            .chain(
                self.invariants
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| format!("{}: {}", c.invariant, c.detail)),
            )
            .collect();
        (!self.passed()).then(|| reasons.join("; "))
    }
}

/// Selects scenarios from the catalogue, in catalogue order.
pub fn select(options: &Options) -> Result<Vec<&'static scenarios::Scenario>, ChaosError> {
    let catalogue = scenarios::catalogue();
    for name in &options.scenarios {
        if !catalogue.iter().any(|s| s.name == name) {
            return Err(ChaosError::UnknownScenario(name.clone()));
        }
    }
    Ok(catalogue
        .iter()
        .filter(|s| options.scenarios.is_empty() || options.scenarios.iter().any(|n| n == s.name))
        .filter(|s| options.families.is_empty() || options.families.contains(&s.family))
        .filter(|s| !options.ci || s.ci)
        .collect())
}

/// Runs the selected scenarios one after the other, calling `progress` before each one starts
/// (with its name) and after it ends (with its report).
pub fn run(
    options: &Options,
    mut started: impl FnMut(&str),
    mut finished: impl FnMut(&ScenarioReport),
) -> Result<Vec<ScenarioReport>, ChaosError> {
    let selected = select(options)?;
    faults::clear_iptables().map_err(ChaosError::Setup)?;
    let mut world = world::World::create(options)?;
    let mut reports = Vec::new();
    for scenario in selected {
        started(scenario.name);
        let report = scenarios::run_one(&world, scenario, options.seed);
        finished(&report);
        reports.push(report);
    }
    let _ = faults::clear_iptables();
    if options.keep {
        eprintln!("chaos: world kept: {}", world.keep());
    } else {
        scenarios::reset_all(&world);
    }
    Ok(reports)
}

/// Milliseconds of a duration, for reports.
pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Milliseconds since `t`.
pub(crate) fn since(t: Instant) -> u64 {
    ms(t.elapsed())
}
