//! The catalogue: each scenario runs one pipeline with the real `dive` binary, injects one
//! fault at a point its seed picks, heals it, and drives the run to the end the product promises.

use crate::faults::{self, Partition};
use crate::world::{Output, Running, World, wait_for};
use crate::{Check, Family, Outcome, ScenarioReport, invariants, ms, since};
use dive_pgcluster::StopMode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::time::{Duration, Instant};

/// The hub and the spoke of the linked pair most scenarios act on.
pub const HUB: &str = "USA";
pub const SPOKE: &str = "FRA";
/// The spoke a Docker deploy scenario creates.
pub const DOCKER_SPOKE: &str = "BEL";
/// The codes this suite puts on the Docker runtime (container names are global on the engine).
pub const DOCKER_CODES: [&str; 3] = [HUB, SPOKE, DOCKER_SPOKE];

/// A deploy, link or rotation must end within this, faults included.
const PIPELINE_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a scenario waits for the point where it injects its fault.
const TRIGGER_TIMEOUT: Duration = Duration::from_secs(600);

/// The state of the world a scenario starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fixture {
    /// No instance at all.
    Empty,
    /// The hub only (and FRA, if an earlier scenario left it).
    Hub,
    /// The hub and FRA, linked.
    Linked,
    /// The hub only, on the Docker runtime.
    DockerHub,
    /// The hub and FRA on the Docker runtime, linked.
    DockerLinked,
}

impl Fixture {
    /// The runtime the fixture's instances run on.
    fn runtime(self) -> &'static str {
        match self {
            Fixture::DockerHub | Fixture::DockerLinked => "docker",
            Fixture::Empty | Fixture::Hub | Fixture::Linked => "local",
        }
    }
}

/// One entry of the catalogue.
pub struct Scenario {
    pub name: &'static str,
    pub family: Family,
    /// The workflow whose run is under fault.
    pub pipeline: &'static str,
    pub fault: &'static str,
    pub needs: Fixture,
    /// The outcomes the product promises for this fault.
    pub expect: &'static [Outcome],
    /// Part of the CI selection.
    pub ci: bool,
    /// Runs the scenario; returns the id of the pipeline's run.
    run: fn(&mut Ctx) -> Result<String, String>,
}

/// What a scenario works with: the world, its seeded schedule, and what it records.
pub struct Ctx<'w> {
    pub world: &'w World,
    rng: StdRng,
    /// The state database's clock when the scenario started: its runs start later.
    since: String,
    t0: Instant,
    injected: Vec<String>,
    healed: Option<Instant>,
    recovered: Option<Duration>,
    /// Breaker keys the fault must have opened.
    pub breakers_opened: Vec<String>,
    /// Extra invariant results of the scenario itself.
    pub checks: Vec<Check>,
}

impl<'w> Ctx<'w> {
    /// A number from `range` (inclusive), the same for the same seed.
    fn pick(&mut self, low: u64, high: u64) -> u64 {
        self.rng.random_range(low..=high)
    }

    fn note(&mut self, what: String) {
        self.injected.push(format!(
            "{what} (t={:.1}s)",
            self.t0.elapsed().as_secs_f64()
        ));
    }

    /// Waits until a phase `phase` of a run of `workflow` started in this scenario is in
    /// `state`, then `extra_ms` more; returns that run's id.
    fn at_phase(
        &mut self,
        workflow: &str,
        phase: &str,
        state: &str,
        extra_ms: u64,
    ) -> Result<String, String> {
        let since = self.since.clone();
        let world = self.world;
        // A short `running` window can fall between two polls: any state the phase can only
        // reach through the wanted one also triggers, and the note says the trigger was late.
        let reached = match state {
            "running" => {
                "'running','succeeded','failed','compensating','compensated','compensation_failed'"
            }
            "succeeded" => "'succeeded','compensating','compensated','compensation_failed'",
            _ => "",
        };
        let states = if reached.is_empty() {
            format!("'{state}'")
        } else {
            reached.to_string()
        };
        let (run, seen) = wait_for(
            &format!("phase `{phase}` of `{workflow}` is {state}"),
            TRIGGER_TIMEOUT,
            || {
                world
                    .sql(&format!(
                        "SELECT p.run_id || ' ' || p.state FROM phases p \
                         JOIN runs r ON r.id = p.run_id \
                         WHERE r.workflow = '{workflow}' AND r.started_at >= '{since}' \
                         AND p.phase_id = '{phase}' AND p.state IN ({states}) LIMIT 1"
                    ))
                    .ok()
                    .and_then(|row| {
                        row.split_once(' ')
                            .map(|(run, seen)| (run.to_string(), seen.to_string()))
                    })
            },
        )?;
        std::thread::sleep(Duration::from_millis(extra_ms));
        if seen == state {
            self.note(format!("at `{phase}` {state} +{extra_ms}ms"));
        } else {
            self.note(format!(
                "at `{phase}` {state} +{extra_ms}ms (late: first seen {seen})"
            ));
        }
        Ok(run)
    }

    /// The root run of `workflow` started in this scenario.
    fn root_run(&self, workflow: &str) -> Result<String, String> {
        let id = self.world.sql(&format!(
            "SELECT id FROM runs WHERE workflow = '{workflow}' AND started_at >= '{}' \
             AND parent_run_id IS NULL ORDER BY started_at LIMIT 1",
            self.since
        ))?;
        if id.is_empty() {
            Err(format!("no run of `{workflow}` was recorded"))
        } else {
            Ok(id)
        }
    }

    /// Scenarios that start several runs of one workflow look for each from its own start.
    fn restart_clock(&mut self) -> Result<(), String> {
        self.since = self.world.sql("SELECT now()")?;
        Ok(())
    }

    fn healed(&mut self) {
        self.healed = Some(Instant::now());
        self.note("healed".into());
    }

    /// Holds a fault for a seeded time in [low, high] seconds, then heals it.
    fn hold(&mut self, heal: faults::Heal<'_>, low: u64, high: u64) -> Result<(), String> {
        let secs = self.rng.random_range(low..=high);
        std::thread::sleep(Duration::from_secs(secs));
        // Recovery counts from the start of healing: a restarted server may already serve
        // before `heal` returns.
        let healing = Instant::now();
        heal.heal()?;
        self.healed = Some(healing);
        self.injected.push(format!(
            "held {secs}s, healed (t={:.1}s)",
            self.t0.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// The common shape of a scenario: starts `args`, waits until `phase` of `workflow` is
    /// `state` and a seeded delay of up to `max_delay_ms` more, injects the fault (`inject`
    /// returns its guard and what it did), holds it a seeded time in `hold` seconds, heals it
    /// and waits for the run to end. Returns the run's id.
    fn fault_at(
        &mut self,
        args: &[&str],
        (workflow, phase, state): (&str, &str, &str),
        max_delay_ms: u64,
        hold: (u64, u64),
        inject: impl FnOnce(&'w World) -> Result<(faults::Heal<'w>, String), String>,
    ) -> Result<String, String> {
        let dive = self.world.spawn(args)?;
        let delay = self.pick(0, max_delay_ms);
        self.at_phase(workflow, phase, state, delay)?;
        let (heal, what) = inject(self.world)?;
        self.note(what);
        self.hold(heal, hold.0, hold.1)?;
        self.finish(dive)?;
        self.root_run(workflow)
    }

    /// Waits for a pipeline command to end; its run's recovery time counts from the healing.
    fn finish(&mut self, running: Running) -> Result<Output, String> {
        let out = running.wait(PIPELINE_TIMEOUT)?;
        if let Some(healed) = self.healed {
            self.recovered = Some(healed.elapsed());
        }
        Ok(out)
    }

    /// `dive resume RUN` (the one resume the promise allows).
    fn resume(&mut self, run: &str) -> Result<Output, String> {
        self.note(format!("dive resume {run}"));
        let out = self
            .world
            .dive_within(&["resume", run, "--json"], PIPELINE_TIMEOUT)?;
        if let Some(healed) = self.healed {
            self.recovered = Some(healed.elapsed());
        }
        Ok(out)
    }

    /// An invariant of this scenario's own.
    fn check(&mut self, invariant: &'static str, result: Result<(), String>) {
        self.checks.push(Check {
            invariant,
            ok: result.is_ok(),
            detail: result.err().unwrap_or_default(),
        });
    }
}

/// Every scenario, in the order they run (by the fixture they need).
pub fn catalogue() -> &'static [Scenario] {
    &CATALOGUE
}

static CATALOGUE: [Scenario; 37] = [
    Scenario {
        name: "hub-deploy.dive-kill9-mid-keycloak",
        family: Family::Process,
        pipeline: "hub-deploy",
        fault: "kill -9 of dive while Keycloak starts, then one dive resume",
        needs: Fixture::Empty,
        expect: &[Outcome::Converged],
        ci: true,
        run: |ctx| {
            let dive = ctx.world.spawn(&["hub", "deploy", "--json"])?;
            let delay = ctx.pick(0, 8000);
            let run = ctx.at_phase("hub-deploy", "keycloak", "running", delay)?;
            dive.signal(libc::SIGKILL)?;
            ctx.note("kill -9 dive".into());
            ctx.healed();
            ctx.finish(dive)?;
            ctx.resume(&run)?;
            Ok(run)
        },
    },
    Scenario {
        name: "spoke-deploy.state-db-stop-fast",
        family: Family::Database,
        pipeline: "spoke-deploy",
        fault: "state database stopped (fast) for 10-20 s after PostgreSQL started",
        needs: Fixture::Hub,
        expect: &[Outcome::Converged],
        ci: true,
        run: |ctx| {
            ctx.fault_at(
                &["spoke", "deploy", "DEU", "--json"],
                ("spoke-deploy", "postgres", "succeeded"),
                3000,
                (10, 20),
                |w| {
                    Ok((
                        faults::state_db_stop(w, StopMode::Fast)?,
                        "state database stopped (fast)".into(),
                    ))
                },
            )
        },
    },
    Scenario {
        name: "spoke-deploy.state-db-stop-immediate",
        family: Family::Database,
        pipeline: "spoke-deploy",
        fault: "state database stopped (immediate: crash recovery) for 5-15 s while Keycloak starts",
        needs: Fixture::Hub,
        expect: &[Outcome::Converged],
        ci: false,
        run: |ctx| {
            ctx.fault_at(
                &["spoke", "deploy", "ITA", "--json"],
                ("spoke-deploy", "keycloak", "running"),
                5000,
                (5, 15),
                |w| {
                    Ok((
                        faults::state_db_stop(w, StopMode::Immediate)?,
                        "state database stopped (immediate)".into(),
                    ))
                },
            )
        },
    },
    Scenario {
        name: "spoke-deploy.keycloak-sigstop",
        family: Family::Process,
        pipeline: "spoke-deploy",
        fault: "the spoke's Keycloak frozen (SIGSTOP) for 35-45 s, past the admin API's 30 s timeout, then SIGCONT",
        needs: Fixture::Hub,
        expect: &[Outcome::Converged],
        ci: true,
        run: |ctx| {
            ctx.fault_at(
                &["spoke", "deploy", "ESP", "--json"],
                ("spoke-deploy", "keycloak", "succeeded"),
                500,
                (35, 45),
                |w| {
                    Ok((
                        faults::service_freeze(w, "ESP", "keycloak")?,
                        "SIGSTOP ESP keycloak".into(),
                    ))
                },
            )
        },
    },
    Scenario {
        name: "spoke-deploy.state-db-reset-peer",
        family: Family::Network,
        pipeline: "spoke-deploy",
        fault: "every connection to the state database reset (toxiproxy reset_peer) for 5-10 s",
        needs: Fixture::Hub,
        expect: &[Outcome::Converged],
        ci: true,
        run: |ctx| {
            ctx.fault_at(
                &["spoke", "deploy", "NLD", "--json"],
                ("spoke-deploy", "keycloak", "running"),
                3000,
                (5, 10),
                |w| {
                    let heal = faults::state_db_toxic(w, "reset_peer", json!({ "timeout": 0 }))?;
                    Ok((heal, "reset_peer on the state database".into()))
                },
            )
        },
    },
    Scenario {
        name: "spoke-deploy.wrong-master-key-at-resume",
        family: Family::Secrets,
        pipeline: "spoke-deploy",
        fault: "kill -9 of dive at a phase boundary, resume with a wrong master key (refused, nothing changed), then with the right one",
        needs: Fixture::Hub,
        expect: &[Outcome::Converged],
        ci: true,
        run: |ctx| {
            let dive = ctx.world.spawn(&["spoke", "deploy", "POL", "--json"])?;
            let run = ctx.at_phase("spoke-deploy", "keycloak-database", "succeeded", 0)?;
            dive.signal(libc::SIGKILL)?;
            ctx.note("kill -9 dive".into());
            ctx.finish(dive)?;
            let before = run_state(ctx.world, &run)?;
            // A key of the right length that is not the key the secrets were sealed with.
            ctx.world.set_var(
                "DIVE_MASTER_KEY",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            );
            let refused = ctx.world.dive_within(&["resume", &run], PIPELINE_TIMEOUT);
            ctx.world.clear_vars();
            let refused = refused?;
            ctx.note("resume with a wrong master key".into());
            let after = run_state(ctx.world, &run)?;
            ctx.check(
                "wrong key refused",
                if refused.code == Some(0) {
                    Err("a resume with a wrong master key succeeded".into())
                } else if !refused.stderr.to_lowercase().contains("master key") {
                    Err(format!(
                        "the refusal does not name the master key: {}",
                        refused.stderr
                    ))
                } else if before != after {
                    Err(format!(
                        "the refused resume changed the run: {before} → {after}"
                    ))
                } else {
                    Ok(())
                },
            );
            ctx.healed();
            ctx.resume(&run)?;
            Ok(run)
        },
    },
    Scenario {
        name: "spoke-deploy.master-key-missing-at-resume",
        family: Family::Secrets,
        pipeline: "spoke-deploy",
        fault: "kill -9 of dive mid-deploy, the master key file gone at resume (refused, no new key made), then restored",
        needs: Fixture::Hub,
        expect: &[Outcome::Converged],
        ci: false,
        run: |ctx| {
            let dive = ctx.world.spawn(&["spoke", "deploy", "CAN", "--json"])?;
            let delay = ctx.pick(0, 4000);
            let run = ctx.at_phase("spoke-deploy", "keycloak", "running", delay)?;
            dive.signal(libc::SIGKILL)?;
            ctx.finish(dive)?;
            let heal = faults::master_key_hidden(ctx.world)?;
            ctx.note("kill -9 dive, master.key moved away".into());
            let refused = ctx.world.dive_within(&["resume", &run], PIPELINE_TIMEOUT)?;
            let made = ctx.world.home().join("master.key").exists();
            ctx.check(
                "missing key refused",
                if refused.code == Some(0) {
                    Err("a resume without the master key succeeded".into())
                } else if made {
                    Err(
                        "dive made a new master key while secrets sealed with the old one exist"
                            .into(),
                    )
                } else {
                    Ok(())
                },
            );
            if made {
                let _ = std::fs::remove_file(ctx.world.home().join("master.key"));
            }
            heal.heal()?;
            ctx.healed();
            ctx.resume(&run)?;
            Ok(run)
        },
    },
    Scenario {
        name: "spoke-deploy.postgres-kill9",
        family: Family::Process,
        pipeline: "spoke-deploy",
        fault: "kill -9 of the new spoke's PostgreSQL while its Keycloak starts",
        needs: Fixture::Hub,
        expect: &[Outcome::Converged, Outcome::RolledBack],
        ci: true,
        run: |ctx| {
            let dive = ctx.world.spawn(&["spoke", "deploy", "DEU", "--json"])?;
            let delay = ctx.pick(0, 6000);
            ctx.at_phase("spoke-deploy", "keycloak", "running", delay)?;
            faults::service_kill(ctx.world, "DEU", "postgres")?;
            ctx.note("kill -9 DEU postgres".into());
            ctx.healed();
            ctx.finish(dive)?;
            ctx.root_run("spoke-deploy")
        },
    },
    Scenario {
        name: "federation-link.state-db-stop-20s",
        family: Family::Database,
        pipeline: "federation-link",
        fault: "state database stopped (fast) for 20 s in the middle of a link; the run pauses and finishes by itself",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: true,
        run: |ctx| {
            unlink(ctx.world)?;
            ctx.fault_at(
                &["federation", "link", SPOKE, "--json"],
                ("federation-link", "client-hub-to-spoke", "running"),
                1000,
                (20, 20),
                |w| {
                    Ok((
                        faults::state_db_stop(w, StopMode::Fast)?,
                        "state database stopped (fast)".into(),
                    ))
                },
            )
        },
    },
    Scenario {
        name: "federation-link.dive-sigstop",
        family: Family::Process,
        pipeline: "federation-link",
        fault: "dive frozen (SIGSTOP) for 10-20 s in the middle of a link, then SIGCONT",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: false,
        run: |ctx| {
            unlink(ctx.world)?;
            let dive = ctx.world.spawn(&["federation", "link", SPOKE, "--json"])?;
            let delay = ctx.pick(0, 1500);
            ctx.at_phase("federation-link", "client-hub-to-spoke", "running", delay)?;
            dive.signal(libc::SIGSTOP)?;
            ctx.note("SIGSTOP dive".into());
            let secs = ctx.pick(10, 20);
            std::thread::sleep(Duration::from_secs(secs));
            dive.signal(libc::SIGCONT)?;
            ctx.note(format!("SIGCONT after {secs}s"));
            ctx.healed();
            ctx.finish(dive)?;
            ctx.root_run("federation-link")
        },
    },
    Scenario {
        name: "federation-link.state-db-disk-full",
        family: Family::Database,
        pipeline: "federation-link",
        fault: "the state database's disk full for 5-10 s in the middle of a link",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: false,
        run: |ctx| {
            unlink(ctx.world)?;
            ctx.fault_at(
                &["federation", "link", SPOKE, "--json"],
                ("federation-link", "client-hub-to-spoke", "running"),
                1000,
                (5, 10),
                |w| {
                    Ok((
                        faults::state_db_disk_full(w)?,
                        "state database's disk full".into(),
                    ))
                },
            )
        },
    },
    Scenario {
        name: "federation-link.state-db-latency",
        family: Family::Network,
        pipeline: "federation-link",
        fault: "100-250 ms of latency each way on the state database for a whole link (below every timeout)",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: true,
        run: |ctx| {
            unlink(ctx.world)?;
            let latency = ctx.pick(100, 250);
            let heal = faults::state_db_toxic(
                ctx.world,
                "latency",
                json!({ "latency": latency, "jitter": 50 }),
            )?;
            ctx.note(format!("latency {latency}ms ±50 on the state database"));
            let dive = ctx.world.spawn(&["federation", "link", SPOKE, "--json"])?;
            let out = ctx.finish(dive);
            heal.heal()?;
            out?;
            ctx.root_run("federation-link")
        },
    },
    Scenario {
        name: "federation-link.state-db-blackhole",
        family: Family::Network,
        pipeline: "federation-link",
        fault: "the state database's link silently stops delivering (toxiproxy timeout) for 15-25 s",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: false,
        run: |ctx| {
            unlink(ctx.world)?;
            ctx.fault_at(
                &["federation", "link", SPOKE, "--json"],
                ("federation-link", "client-hub-to-spoke", "running"),
                1000,
                (15, 25),
                |w| {
                    let heal = faults::state_db_toxic(w, "timeout", json!({ "timeout": 0 }))?;
                    Ok((heal, "timeout (blackhole) on the state database".into()))
                },
            )
        },
    },
    Scenario {
        name: "federation-link.secret-deleted",
        family: Family::Secrets,
        pipeline: "federation-link",
        fault: "the hub→spoke client secret deleted from the store: drift reports it, link repairs it",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: true,
        run: |ctx| {
            let name = format!(
                "federation/{}/{}/client-secret",
                HUB.to_lowercase(),
                SPOKE.to_lowercase()
            );
            let deleted = faults::secret_delete(ctx.world, &name)?;
            ctx.note(format!("deleted {deleted} version(s) of {name}"));
            let drift = ctx.world.dive(&["federation", "drift", SPOKE, "--json"])?;
            ctx.check(
                "drift names the deleted secret",
                match drift.json() {
                    Ok(doc) if doc["drifted"] == true => Ok(()),
                    Ok(doc) => Err(format!("drift found nothing: {doc}")),
                    Err(e) => Err(e),
                },
            );
            ctx.healed();
            let dive = ctx.world.spawn(&["federation", "link", SPOKE, "--json"])?;
            ctx.finish(dive)?;
            ctx.root_run("federation-link")
        },
    },
    Scenario {
        name: "federation-verify.spoke-partition-reject",
        family: Family::Partition,
        pipeline: "federation-verify",
        fault: "the spoke's Keycloak port REJECTed (iptables tcp-reset) during verify: it fails naming FRA and opens its breaker; healed, verify passes",
        needs: Fixture::Linked,
        expect: &[Outcome::RolledBack],
        ci: true,
        run: |ctx| {
            let port = port_of(ctx.world, SPOKE, "keycloak")?;
            let heal = faults::partition_port(port, Partition::Reject)?;
            ctx.note(format!("REJECT 127.0.0.1:{port} (FRA keycloak)"));
            let out = ctx
                .world
                .dive_within(&["federation", "verify", SPOKE, "--json"], PIPELINE_TIMEOUT)?;
            heal.heal()?;
            ctx.healed();
            ctx.check(
                "verify fails naming the spoke",
                if out.code == Some(0) {
                    Err("verify passed through a partition".into())
                } else if !(out.stdout.contains(SPOKE) || out.stderr.contains(SPOKE)) {
                    Err(format!(
                        "the failure does not name {SPOKE}: {}{}",
                        out.stdout, out.stderr
                    ))
                } else {
                    Ok(())
                },
            );
            ctx.breakers_opened.push(format!("keycloak:{SPOKE}"));
            ctx.root_run("federation-verify")
        },
    },
    Scenario {
        name: "federation-verify.hub-partition-drop",
        family: Family::Partition,
        pipeline: "federation-verify",
        fault: "the hub's Keycloak port DROPped (iptables) for 3-8 s from the start of a verify",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged, Outcome::RolledBack],
        ci: false,
        run: |ctx| {
            let port = port_of(ctx.world, HUB, "keycloak")?;
            let heal = faults::partition_port(port, Partition::Drop)?;
            ctx.note(format!("DROP 127.0.0.1:{port} (USA keycloak)"));
            let dive = ctx
                .world
                .spawn(&["federation", "verify", SPOKE, "--json"])?;
            ctx.hold(heal, 3, 8)?;
            ctx.finish(dive)?;
            ctx.root_run("federation-verify")
        },
    },
    Scenario {
        name: "federation-verify.state-db-terminate",
        family: Family::Database,
        pipeline: "federation-verify",
        fault: "every state database backend of dive terminated, three times a second apart, during verify",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: true,
        run: |ctx| {
            let dive = ctx
                .world
                .spawn(&["federation", "verify", SPOKE, "--json"])?;
            let delay = ctx.pick(0, 500);
            ctx.at_phase("federation-verify", "reach-hub", "succeeded", delay)?;
            for _ in 0..3 {
                let n = faults::state_db_terminate(ctx.world)?;
                ctx.note(format!("terminated {n} backends"));
                std::thread::sleep(Duration::from_secs(1));
            }
            ctx.healed();
            ctx.finish(dive)?;
            ctx.root_run("federation-verify")
        },
    },
    Scenario {
        name: "secret-rotation.dive-kill9-mid-rollout",
        family: Family::Process,
        pipeline: "secret-rotation",
        fault: "kill -9 of dive while the new federation secret is rolled out, then one dive resume",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: true,
        run: |ctx| {
            let dive =
                ctx.world
                    .spawn(&["secrets", "rotate", SPOKE, "--only", "federation", "--json"])?;
            let delay = ctx.pick(0, 300);
            let run = ctx.at_phase("secret-rotation", "client", "running", delay)?;
            dive.signal(libc::SIGKILL)?;
            ctx.note("kill -9 dive".into());
            ctx.healed();
            ctx.finish(dive)?;
            ctx.resume(&run)?;
            Ok(run)
        },
    },
    Scenario {
        name: "secret-rotation.state-db-cut",
        family: Family::Network,
        pipeline: "secret-rotation",
        fault: "the state database's proxy disabled (a partition) for 10-20 s during a rotation",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: true,
        run: |ctx| {
            ctx.fault_at(
                &["secrets", "rotate", SPOKE, "--only", "federation", "--json"],
                ("secret-rotation", "mint", "succeeded"),
                300,
                (10, 20),
                |w| {
                    Ok((
                        faults::state_db_cut(w)?,
                        "state database proxy disabled".into(),
                    ))
                },
            )
        },
    },
    Scenario {
        name: "secret-rotation.state-db-read-only",
        family: Family::Database,
        pipeline: "secret-rotation",
        fault: "the state database read-only (sessions reconnect read-only) for 5-10 s during a rotation",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: false,
        run: |ctx| {
            ctx.fault_at(
                &["secrets", "rotate", SPOKE, "--only", "federation", "--json"],
                ("secret-rotation", "mint", "succeeded"),
                300,
                (5, 10),
                |w| {
                    Ok((
                        faults::state_db_read_only(w)?,
                        "state database read-only".into(),
                    ))
                },
            )
        },
    },
    Scenario {
        name: "federation-link.dive-kill9-at-boundary",
        family: Family::Process,
        pipeline: "federation-link",
        fault: "kill -9 of dive the moment the hub→spoke identity provider is checkpointed, then one dive resume",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: false,
        run: |ctx| {
            unlink(ctx.world)?;
            let dive = ctx.world.spawn(&["federation", "link", SPOKE, "--json"])?;
            let run = ctx.at_phase("federation-link", "idp-hub-to-spoke", "succeeded", 0)?;
            dive.signal(libc::SIGKILL)?;
            ctx.note("kill -9 dive".into());
            ctx.healed();
            ctx.finish(dive)?;
            ctx.resume(&run)?;
            Ok(run)
        },
    },
    Scenario {
        name: "federation-link.spoke-admin-slicer",
        family: Family::Network,
        pipeline: "federation-link",
        fault: "every connection to the spoke's Keycloak (admin API, back-channel) sliced into 16-64 byte pieces 1 ms apart during a link",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: false,
        run: |ctx| {
            unlink(ctx.world)?;
            let port = port_of(ctx.world, SPOKE, "keycloak")?;
            let route = faults::route(ctx.world, "fra-keycloak", port)?;
            let size = ctx.pick(16, 64);
            let heal = route.toxic(
                "slicer",
                json!({ "average_size": size, "size_variation": size / 2, "delay": 1000 }),
            )?;
            ctx.note(format!("slicer {size}±{} bytes on FRA keycloak", size / 2));
            let dive = ctx.world.spawn(&["federation", "link", SPOKE, "--json"])?;
            let out = ctx.finish(dive);
            heal.heal()?;
            out?;
            ctx.root_run("federation-link")
        },
    },
    Scenario {
        name: "federation-link.spoke-admin-bandwidth",
        family: Family::Network,
        pipeline: "federation-link",
        fault: "the spoke's Keycloak reachable at 16-64 KB/s only during a link",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: true,
        run: |ctx| {
            unlink(ctx.world)?;
            let port = port_of(ctx.world, SPOKE, "keycloak")?;
            let route = faults::route(ctx.world, "fra-keycloak", port)?;
            let rate = ctx.pick(16, 64);
            let heal = route.toxic("bandwidth", json!({ "rate": rate }))?;
            ctx.note(format!("bandwidth {rate} KB/s on FRA keycloak"));
            let dive = ctx.world.spawn(&["federation", "link", SPOKE, "--json"])?;
            let out = ctx.finish(dive);
            heal.heal()?;
            out?;
            ctx.root_run("federation-link")
        },
    },
    Scenario {
        name: "federation-link.spoke-admin-cut",
        family: Family::Network,
        pipeline: "federation-link",
        fault: "the spoke's Keycloak cut off (proxy disabled) for 3-8 s in the middle of a link",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged, Outcome::RolledBack],
        ci: false,
        run: |ctx| {
            unlink(ctx.world)?;
            let port = port_of(ctx.world, SPOKE, "keycloak")?;
            let route = faults::route(ctx.world, "fra-keycloak", port)?;
            ctx.fault_at(
                &["federation", "link", SPOKE, "--json"],
                ("federation-link", "client-hub-to-spoke", "running"),
                1000,
                (3, 8),
                |_| Ok((route.cut()?, "FRA keycloak's route disabled".into())),
            )
        },
    },
    Scenario {
        name: "federation-verify.spoke-db-latency-above-timeouts",
        family: Family::Network,
        pipeline: "federation-verify",
        fault: "12-20 s of latency between the spoke's Keycloak and its PostgreSQL (above the login client's 10 s timeout) during verify: it fails; healed, the federation is whole",
        needs: Fixture::Linked,
        expect: &[Outcome::RolledBack],
        ci: false,
        run: |ctx| {
            let port = port_of(ctx.world, SPOKE, "postgres")?;
            let route = faults::route(ctx.world, "fra-postgres", port)?;
            let latency = ctx.pick(12_000, 20_000);
            let heal = route.toxic("latency", json!({ "latency": latency }))?;
            ctx.note(format!(
                "latency {latency}ms between FRA keycloak and its database"
            ));
            let out = ctx
                .world
                .dive_within(&["federation", "verify", SPOKE, "--json"], PIPELINE_TIMEOUT);
            heal.heal()?;
            ctx.healed();
            drop(route);
            ctx.check(
                "verify fails naming the spoke",
                match out {
                    Ok(o) if o.code == Some(0) => {
                        Err("verify passed through a 12 s database latency".into())
                    }
                    Ok(o) if !(o.stdout.contains(SPOKE) || o.stderr.contains(SPOKE)) => {
                        Err(format!(
                            "the failure does not name {SPOKE}: {}{}",
                            o.stdout, o.stderr
                        ))
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                },
            );
            ctx.root_run("federation-verify")
        },
    },
    Scenario {
        name: "federation-verify.spoke-limit-data",
        family: Family::Network,
        pipeline: "federation-verify",
        fault: "every connection to the spoke's Keycloak closed after 1-4 KB (toxiproxy limit_data) during verify",
        needs: Fixture::Linked,
        expect: &[Outcome::RolledBack, Outcome::Converged],
        ci: false,
        run: |ctx| {
            let port = port_of(ctx.world, SPOKE, "keycloak")?;
            let route = faults::route(ctx.world, "fra-keycloak", port)?;
            let bytes = ctx.pick(1024, 4096);
            let heal = route.toxic("limit_data", json!({ "bytes": bytes }))?;
            ctx.note(format!("limit_data {bytes} bytes on FRA keycloak"));
            let out = ctx
                .world
                .dive_within(&["federation", "verify", SPOKE, "--json"], PIPELINE_TIMEOUT);
            heal.heal()?;
            ctx.healed();
            out?;
            ctx.root_run("federation-verify")
        },
    },
    Scenario {
        name: "federation-verify.spoke-keycloak-kill9",
        family: Family::Process,
        pipeline: "federation-verify",
        fault: "kill -9 of the spoke's Keycloak: verify fails naming FRA; healed by `dive spoke deploy FRA`",
        needs: Fixture::Linked,
        expect: &[Outcome::RolledBack],
        ci: false,
        run: |ctx| {
            faults::service_kill(ctx.world, SPOKE, "keycloak")?;
            ctx.note("kill -9 FRA keycloak".into());
            let out = ctx
                .world
                .dive_within(&["federation", "verify", SPOKE, "--json"], PIPELINE_TIMEOUT)?;
            ctx.check(
                "verify fails naming the spoke",
                if out.code == Some(0) {
                    Err("verify passed with the spoke's Keycloak dead".into())
                } else if !(out.stdout.contains(SPOKE) || out.stderr.contains(SPOKE)) {
                    Err(format!(
                        "the failure does not name {SPOKE}: {}{}",
                        out.stdout, out.stderr
                    ))
                } else {
                    Ok(())
                },
            );
            let run = ctx.root_run("federation-verify")?;
            ctx.world
                .dive_within(&["spoke", "deploy", SPOKE, "--json"], PIPELINE_TIMEOUT)?
                .expect_code(0)?;
            ctx.healed();
            Ok(run)
        },
    },
    Scenario {
        name: "federation-verify.state-db-slots-taken",
        family: Family::Database,
        pipeline: "federation-verify",
        fault: "every connection slot of the state database's server taken and dive's sessions terminated, for 5-10 s during verify",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: false,
        run: |ctx| {
            ctx.fault_at(
                &["federation", "verify", SPOKE, "--json"],
                ("federation-verify", "reach-hub", "succeeded"),
                300,
                (5, 10),
                |w| {
                    let (heal, taken) = faults::state_db_slots_taken(w)?;
                    Ok((
                        heal,
                        format!("{taken} connection slots taken, dive's sessions terminated"),
                    ))
                },
            )
        },
    },
    Scenario {
        name: "secret-rotation.spoke-db-reset-peer",
        family: Family::Network,
        pipeline: "secret-rotation",
        fault: "every connection between the spoke's Keycloak and its PostgreSQL reset for 3-8 s while the new federation secret is rolled out",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged, Outcome::RolledBack],
        ci: true,
        run: |ctx| {
            let port = port_of(ctx.world, SPOKE, "postgres")?;
            let route = faults::route(ctx.world, "fra-postgres", port)?;
            ctx.fault_at(
                &["secrets", "rotate", SPOKE, "--only", "federation", "--json"],
                ("secret-rotation", "mint", "succeeded"),
                300,
                (3, 8),
                |_| {
                    let heal = route.toxic("reset_peer", json!({ "timeout": 0 }))?;
                    Ok((
                        heal,
                        "reset_peer between FRA keycloak and its database".into(),
                    ))
                },
            )
        },
    },
    Scenario {
        name: "federation-link.state-db-postmaster-kill9",
        family: Family::Process,
        pipeline: "federation-link",
        fault: "kill -9 of the state database's postmaster in the middle of a link, started again 5-10 s later (crash recovery); the run pauses and finishes by itself",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: false,
        run: |ctx| {
            unlink(ctx.world)?;
            ctx.fault_at(
                &["federation", "link", SPOKE, "--json"],
                ("federation-link", "client-hub-to-spoke", "running"),
                1000,
                (5, 10),
                |w| {
                    Ok((
                        faults::state_db_postmaster_kill(w)?,
                        "kill -9 of the state database's postmaster".into(),
                    ))
                },
            )
        },
    },
    Scenario {
        name: "secret-rotation.state-db-sigstop",
        family: Family::Process,
        pipeline: "secret-rotation",
        fault: "every process of the state database's server frozen (SIGSTOP) for 10-20 s during a rotation, then SIGCONT",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: false,
        run: |ctx| {
            ctx.fault_at(
                &["secrets", "rotate", SPOKE, "--only", "federation", "--json"],
                ("secret-rotation", "mint", "succeeded"),
                300,
                (10, 20),
                |w| {
                    Ok((
                        faults::state_db_freeze(w)?,
                        "SIGSTOP of the state database's server".into(),
                    ))
                },
            )
        },
    },
    Scenario {
        name: "federation-link.dive-kill9-every-boundary",
        family: Family::Process,
        pipeline: "federation-link",
        fault: "one link per phase: kill -9 of dive the moment that phase is checkpointed, then one dive resume; each link succeeds and no phase runs twice",
        needs: Fixture::Linked,
        expect: &[Outcome::Converged],
        ci: false,
        run: |ctx| {
            let mut last = String::new();
            let mut failed = Vec::new();
            for phase in LINK_PHASES {
                unlink(ctx.world)?;
                ctx.restart_clock()?;
                let dive = ctx.world.spawn(&["federation", "link", SPOKE, "--json"])?;
                let run = ctx.at_phase("federation-link", phase, "succeeded", 0)?;
                dive.signal(libc::SIGKILL)?;
                let done = succeeded_phases(ctx.world, &run)?;
                ctx.note(format!("kill -9 dive; checkpointed: {}", done.join(", ")));
                ctx.healed();
                ctx.finish(dive)?;
                ctx.resume(&run)?;
                let state = run_state(ctx.world, &run)?;
                if state != "succeeded" {
                    failed.push(format!("killed after `{phase}`: run {run} ended {state}"));
                }
                last = run;
            }
            ctx.check(
                "every resumed link succeeded",
                if failed.is_empty() {
                    Ok(())
                } else {
                    Err(failed.join("; "))
                },
            );
            Ok(last)
        },
    },
    Scenario {
        name: "federation-link.hub-partition-reject-rolls-back",
        family: Family::Partition,
        pipeline: "federation-link",
        fault: "the hub's Keycloak port REJECTed from the moment the hub's stack is reconciled until the link gives up: it rolls back, and neither realm keeps a client or identity provider of the other",
        needs: Fixture::Linked,
        expect: &[Outcome::RolledBack],
        ci: true,
        run: |ctx| {
            unlink(ctx.world)?;
            let port = port_of(ctx.world, HUB, "keycloak")?;
            let dive = ctx.world.spawn(&["federation", "link", SPOKE, "--json"])?;
            let run = ctx.at_phase("federation-link", "hub", "succeeded", 0)?;
            let heal = faults::partition_port(port, Partition::Reject)?;
            ctx.note(format!("REJECT 127.0.0.1:{port} (USA keycloak)"));
            // Held until the link has spent its retries: its compensations need the hub.
            let world = ctx.world;
            wait_for("the link gives up", TRIGGER_TIMEOUT, || {
                run_state(world, &run).ok().filter(|s| s != "running")
            })?;
            heal.heal()?;
            ctx.healed();
            ctx.finish(dive)?;
            ctx.breakers_opened.push(format!("keycloak:{HUB}"));
            Ok(run)
        },
    },
    Scenario {
        name: "spoke-deploy.docker-keycloak-container-kill",
        family: Family::Process,
        pipeline: "spoke-deploy",
        fault: "docker kill of the new spoke's Keycloak container 0-8 s after it started (Docker runtime)",
        needs: Fixture::DockerHub,
        expect: &[Outcome::Converged, Outcome::RolledBack],
        ci: false,
        run: |ctx| {
            let dive = ctx.world.spawn(&[
                "spoke",
                "deploy",
                DOCKER_SPOKE,
                "--runtime",
                "docker",
                "--json",
            ])?;
            ctx.at_phase("spoke-deploy", "keycloak", "running", 0)?;
            let name = faults::container(DOCKER_SPOKE, "keycloak");
            wait_for(&format!("{name} runs"), TRIGGER_TIMEOUT, || {
                faults::container_running(&name).then_some(())
            })?;
            let delay = ctx.pick(0, 8000);
            std::thread::sleep(Duration::from_millis(delay));
            faults::container_kill(DOCKER_SPOKE, "keycloak")?;
            ctx.note(format!("docker kill {name}, {delay}ms after it started"));
            ctx.healed();
            ctx.finish(dive)?;
            ctx.root_run("spoke-deploy")
        },
    },
    Scenario {
        name: "federation-link.docker-spoke-pause",
        family: Family::Process,
        pipeline: "federation-link",
        fault: "the spoke's Keycloak container paused (docker pause) for 35-45 s in the middle of a link, past the admin API's 30 s timeout, then unpaused: the link's retries outlast it or it rolls back, leaving no object behind (Docker runtime)",
        needs: Fixture::DockerLinked,
        expect: &[Outcome::Converged, Outcome::RolledBack],
        ci: false,
        run: |ctx| {
            unlink(ctx.world)?;
            ctx.fault_at(
                &["federation", "link", SPOKE, "--json"],
                ("federation-link", "client-hub-to-spoke", "running"),
                1000,
                (35, 45),
                |_| {
                    Ok((
                        faults::container_pause(SPOKE, "keycloak")?,
                        format!("docker pause {}", faults::container(SPOKE, "keycloak")),
                    ))
                },
            )
        },
    },
    Scenario {
        name: "federation-verify.docker-backchannel-disconnect",
        family: Family::Partition,
        pipeline: "federation-verify",
        fault: "the spoke's Keycloak container disconnected from network dive-federation during verify: the broker back-channel is cut both ways while dive still reaches both Keycloaks; both directions fail, reconnected the federation is whole (Docker runtime)",
        needs: Fixture::DockerLinked,
        expect: &[Outcome::RolledBack],
        ci: true,
        run: |ctx| {
            let name = faults::container(SPOKE, "keycloak");
            let heal = faults::network_disconnect(SPOKE, "keycloak", faults::FEDERATION_NETWORK)?;
            ctx.note(format!(
                "{name} disconnected from {}",
                faults::FEDERATION_NETWORK
            ));
            let out = ctx
                .world
                .dive_within(&["federation", "verify", SPOKE, "--json"], PIPELINE_TIMEOUT);
            heal.heal()?;
            ctx.healed();
            let run = ctx.root_run("federation-verify")?;
            let result = out.and_then(|out| {
                logins_failed(ctx.world, &run, &out, &["hub-to-spoke", "spoke-to-hub"])
            });
            ctx.check("only the logins fail", result);
            Ok(run)
        },
    },
    Scenario {
        name: "federation-verify.docker-backchannel-netns-drop",
        family: Family::Partition,
        pipeline: "federation-verify",
        fault: "in the network namespace of the spoke's Keycloak container, iptables DROPs its connections to the hub's container (the spoke's broker back-channel alone) during verify: hub users cannot log in at the spoke, spoke users still log in at the hub (Docker runtime)",
        needs: Fixture::DockerLinked,
        expect: &[Outcome::RolledBack],
        ci: false,
        run: |ctx| {
            let (from, to) = (
                faults::container(SPOKE, "keycloak"),
                faults::container(HUB, "keycloak"),
            );
            let heal = faults::netns_partition(
                &from,
                &to,
                faults::FEDERATION_NETWORK,
                KEYCLOAK_CONTAINER_PORT,
                Partition::Drop,
            )?;
            ctx.note(format!(
                "DROP in {from}'s network namespace to {to}:{KEYCLOAK_CONTAINER_PORT}"
            ));
            let out = ctx
                .world
                .dive_within(&["federation", "verify", SPOKE, "--json"], PIPELINE_TIMEOUT);
            heal.heal()?;
            ctx.healed();
            let run = ctx.root_run("federation-verify")?;
            let result =
                out.and_then(|out| logins_failed(ctx.world, &run, &out, &["hub-to-spoke"]));
            ctx.check("only the hub-to-spoke logins fail", result);
            Ok(run)
        },
    },
];

/// The phases of `federation-link`, in the order they are checkpointed.
const LINK_PHASES: [&str; 7] = [
    "hub",
    "spoke",
    "client-hub-to-spoke",
    "client-spoke-to-hub",
    "idp-hub-to-spoke",
    "idp-spoke-to-hub",
    "record",
];

/// The port Keycloak serves HTTPS on inside its container.
const KEYCLOAK_CONTAINER_PORT: u16 = 8443;

/// The phases of `run` that are checkpointed as succeeded.
fn succeeded_phases(world: &World, run: &str) -> Result<Vec<String>, String> {
    Ok(world
        .rows(&format!(
            "SELECT phase_id FROM phases WHERE run_id = '{run}' AND state = 'succeeded' \
             ORDER BY finished_at"
        ))?
        .iter()
        .filter_map(|r| r["phase_id"].as_str().map(str::to_string))
        .collect())
}

/// A verify run failed in exactly the `failing` login directions: both Keycloaks were reachable
/// (the reachability phases succeeded), every other direction passed, and the output names the
/// spoke.
fn logins_failed(world: &World, run: &str, out: &Output, failing: &[&str]) -> Result<(), String> {
    if out.code == Some(0) {
        return Err("verify passed".into());
    }
    if !(out.stdout.contains(SPOKE) || out.stderr.contains(SPOKE)) {
        return Err(format!(
            "the failure does not name {SPOKE}: {}{}",
            out.stdout, out.stderr
        ));
    }
    let states = world.rows(&format!(
        "SELECT phase_id, state FROM phases WHERE run_id = '{run}'"
    ))?;
    let state = |phase: &str| {
        states
            .iter()
            .find(|r| r["phase_id"] == phase)
            .and_then(|r| r["state"].as_str())
            .unwrap_or("missing")
            .to_string()
    };
    let mut wrong = Vec::new();
    for phase in ["reach-hub", "reach-spoke", "hub-to-spoke", "spoke-to-hub"] {
        let s = state(phase);
        let should_fail = failing.contains(&phase);
        if should_fail != (s == "failed") {
            wrong.push(format!("{phase} is {s}"));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "expected exactly {failing:?} to fail: {}",
            wrong.join(", ")
        ))
    }
}

fn run_state(world: &World, run: &str) -> Result<String, String> {
    world.sql(&format!("SELECT state FROM runs WHERE id = '{run}'"))
}

/// The port of service `service` (`keycloak`, `postgres`) of instance `code`, as
/// `dive status --json` shows it.
fn port_of(world: &World, code: &str, service: &str) -> Result<u16, String> {
    let status = world.dive_json(&["status"])?;
    status["instances"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["code"] == code))
        .and_then(|i| i["ports"][service].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| format!("no {service} port for {code} in `dive status --json`: {status}"))
}

/// Unlinks the pair (not under fault) so that a link has real work to do.
fn unlink(world: &World) -> Result<(), String> {
    world
        .dive_within(
            &["federation", "unlink", SPOKE, "--yes", "--json"],
            PIPELINE_TIMEOUT,
        )?
        .expect_code(0)
        .map(|_| ())
}

/// An instance registered now.
struct Registered {
    code: String,
    role: String,
    runtime: String,
}

/// Instances registered now, spokes first.
fn registered(world: &World) -> Result<Vec<Registered>, String> {
    let rows = world
        .rows("SELECT code, role, runtime FROM instances ORDER BY role DESC, code")
        .or_else(|e| {
            if e.contains("does not exist") {
                Ok(Vec::new())
            } else {
                Err(e)
            }
        })?;
    let text = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or_default().to_string();
    Ok(rows
        .iter()
        .map(|r| Registered {
            code: text(r, "code"),
            role: text(r, "role"),
            runtime: text(r, "runtime"),
        })
        .collect())
}

/// `dive hub|spoke reset`; `runtime` is where to look for an unregistered instance's leftovers.
fn reset(world: &World, code: &str, role: &str, runtime: &str) -> Result<(), String> {
    let args = if role == "hub" {
        vec![
            "hub",
            "reset",
            "--code",
            code,
            "--yes",
            "--runtime",
            runtime,
        ]
    } else {
        vec!["spoke", "reset", code, "--yes", "--runtime", runtime]
    };
    world
        .dive_within(&args, PIPELINE_TIMEOUT)?
        .expect_code(0)
        .map(|_| ())
}

/// Resets every instance (spokes first): the end of a chaos run.
pub fn reset_all(world: &World) {
    if let Ok(instances) = registered(world) {
        for i in instances {
            if let Err(e) = reset(world, &i.code, &i.role, &i.runtime) {
                eprintln!("chaos: resetting {}: {e}", i.code);
            }
        }
    }
}

/// Codes that have a directory under DIVE_HOME/instances, secrets or containers, but no
/// registration (with the runtime to clean): what a failed rollback left (the scenario that
/// left it has reported it).
fn leftovers(world: &World) -> Result<Vec<(String, &'static str)>, String> {
    let registered = registered(world)?;
    let containers: Vec<(String, &'static str)> = faults::container_instances()
        .into_iter()
        .map(|c| c.to_uppercase())
        .filter(|c| DOCKER_CODES.contains(&c.as_str()))
        .filter(|c| {
            !registered
                .iter()
                .any(|r| r.code == *c && r.runtime == "docker")
        })
        .map(|c| (c, "docker"))
        .collect();
    let registered: Vec<String> = registered.into_iter().map(|r| r.code).collect();
    let mut codes: Vec<String> = std::fs::read_dir(world.home().join("instances"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_uppercase())
                .collect()
        })
        .unwrap_or_default();
    let secrets = world
        .rows("SELECT DISTINCT name FROM secrets")
        .unwrap_or_default();
    codes.extend(
        secrets
            .iter()
            .filter_map(|r| r["name"].as_str())
            .filter(|name| !name.starts_with("federation/"))
            .flat_map(dive_secrets::owners)
            .map(|c| c.to_uppercase()),
    );
    codes.sort();
    codes.dedup();
    codes.retain(|c| !registered.contains(c));
    let mut all: Vec<(String, &'static str)> = codes.into_iter().map(|c| (c, "local")).collect();
    all.extend(containers);
    Ok(all)
}

/// Brings the world to `fixture`: what an earlier scenario left behind is cleaned away, spokes
/// other than FRA (deployed by deploy scenarios) are reset.
fn prepare(world: &World, fixture: Fixture) -> Result<(), String> {
    for (code, runtime) in leftovers(world)? {
        reset(world, &code, "spoke", runtime)?;
    }
    let runtime = fixture.runtime();
    for i in registered(world)? {
        if fixture == Fixture::Empty
            || i.runtime != runtime
            || (i.role == "spoke" && i.code != SPOKE)
        {
            reset(world, &i.code, &i.role, &i.runtime)?;
        }
    }
    let args: &[&str] = match fixture {
        Fixture::Empty => return Ok(()),
        Fixture::Hub | Fixture::DockerHub => &["hub", "deploy", "--json", "--runtime", runtime],
        Fixture::Linked | Fixture::DockerLinked => &[
            "run",
            "workflow",
            "quickstart",
            "--json",
            "--runtime",
            runtime,
        ],
    };
    world
        .dive_within(args, PIPELINE_TIMEOUT)?
        .expect_code(0)
        .map(|_| ())
}

/// Runs one scenario: fixture, scenario, outcome, invariants.
pub fn run_one(world: &World, scenario: &'static Scenario, seed: u64) -> ScenarioReport {
    let t0 = Instant::now();
    let mut report = ScenarioReport {
        scenario: scenario.name,
        family: scenario.family,
        pipeline: scenario.pipeline,
        fault: scenario.fault,
        injected: Vec::new(),
        outcome: Outcome::Failed,
        recovery_ms: None,
        elapsed_ms: 0,
        invariants: Vec::new(),
        error: None,
    };
    if let Err(e) = prepare(world, scenario.needs) {
        report.error = Some(format!("preparing the world: {e}"));
        report.elapsed_ms = since(t0);
        return report;
    }
    let since_db = match world.sql("SELECT now()") {
        Ok(t) => t,
        Err(e) => {
            report.error = Some(format!("reading the state database's clock: {e}"));
            return report;
        }
    };
    // The same seed gives each scenario the same schedule, whichever others run.
    let scenario_seed = seed
        ^ scenario.name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
    let mut ctx = Ctx {
        world,
        rng: StdRng::seed_from_u64(scenario_seed),
        since: since_db.clone(),
        t0,
        injected: Vec::new(),
        healed: None,
        recovered: None,
        breakers_opened: Vec::new(),
        checks: Vec::new(),
    };
    let result = (scenario.run)(&mut ctx);
    let Ctx {
        injected,
        recovered,
        breakers_opened,
        checks,
        ..
    } = ctx;
    report.injected = injected;
    report.recovery_ms = recovered.map(ms);
    match result {
        Ok(run) => {
            let state = run_state(world, &run).unwrap_or_else(|e| e);
            report.outcome = match state.as_str() {
                "succeeded" => Outcome::Converged,
                "rolled_back" => Outcome::RolledBack,
                _ => Outcome::Failed,
            };
            if report.outcome == Outcome::Failed {
                report.error = Some(format!("run {run} ended {state}"));
            } else if !scenario.expect.contains(&report.outcome) {
                report.error = Some(format!(
                    "run {run} ended {state}; expected {:?}",
                    scenario.expect
                ));
                report.outcome = Outcome::Failed;
            }
            report.invariants = checks;
            report.invariants.extend(invariants::check_all(
                world,
                &since_db,
                report.outcome,
                &breakers_opened,
            ));
        }
        Err(e) => {
            report.error = Some(e);
            report.invariants = checks;
        }
    }
    report.elapsed_ms = since(t0);
    report
}
