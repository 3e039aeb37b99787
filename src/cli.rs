//! Command-line definitions (clap), apart from the code that runs them.

use clap::{Args, Parser, Subcommand, ValueEnum};
use dive_runtime::RuntimeKind;
use std::path::PathBuf;
use uuid::Uuid;

/// dive deploys coalition identity stacks and keeps their federation healthy. Every operation is
/// a workflow: a DAG of typed phases run with PostgreSQL checkpoints, retries, circuit breakers
/// and automatic rollback. Kill a run at any point and `dive resume` it.
///
/// State lives in DIVE_DATABASE_URL, or (when unset) in a private PostgreSQL cluster that dive
/// starts under DIVE_HOME (default ~/.local/share/dive).
///
/// Exit codes: 0 success; 1 run failed or rolled back; 2 invalid input; 3 lock held by another run.
#[derive(Debug, Parser)]
#[command(name = "dive", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines on stderr: `text` (errors only unless RUST_LOG says more, beside the progress
    /// view) or `json` (one object per line, info and above unless RUST_LOG says otherwise,
    /// instead of the progress view). Each line carries the run id, workflow and trace id (a
    /// child run's is its root run's id), and the phase and attempt where there is one.
    #[arg(long, global = true, env = "DIVE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run something (a workflow).
    #[command(subcommand)]
    Run(RunCommand),
    /// Continue a run that stopped (crash, kill, database outage, --no-rollback failure).
    /// Succeeded phases are not run again; their stored outputs are reused.
    Resume {
        run_id: Uuid,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// List, inspect and cancel runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// List, show and validate workflow definitions.
    #[command(subcommand)]
    Workflow(WorkflowCommand),
    /// Manage the state database.
    #[command(subcommand)]
    Db(DbCommand),
    /// Inspect and clean run locks.
    #[command(subcommand)]
    Locks(LocksCommand),
    /// Remove what dive created (services, containers, volumes, networks, data, stale locks)
    /// on both runtimes. Lists what it would remove and asks, unless --force.
    Cleanup {
        /// Everything dive created.
        #[arg(long, conflicts_with = "instance")]
        all: bool,
        /// Only what belongs to this instance code.
        #[arg(long)]
        instance: Option<String>,
        /// Do not ask.
        #[arg(long)]
        force: bool,
        /// List what would be removed and remove nothing (exit 0: nothing to remove, 4: there
        /// is something).
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: print the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Link the hub and a spoke with bidirectional OIDC federation, verify it by real logins,
    /// and show its state.
    #[command(subcommand)]
    Federation(FederationCommand),
    /// Benchmarks that print figures as JSON.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// List stored secrets and read one (values only with --reveal).
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// The local certificate authority of this dive home: it issues every Keycloak's HTTPS
    /// certificate, and it is the only CA dive's own clients trust.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Serve Prometheus metrics and keep a federation heartbeat, until SIGTERM or Ctrl-C.
    ///
    /// `/metrics` (OpenMetrics text) shows runs, phases, retries, rollbacks, breakers, locks,
    /// each federation direction's verifications, secret ages and instance service health, all
    /// read from the state database at scrape time (runs of every dive process count).
    /// `/healthz` answers 200 while the state database does. Every --heartbeat, each linked pair
    /// is verified by a recorded `federation-verify` run; a pair whose lock another run holds is
    /// skipped, and said so. Runs in the foreground: start it under a service manager.
    Serve {
        /// Address to listen on (keep it on loopback unless a firewall protects it).
        #[arg(long, default_value = "127.0.0.1:9464")]
        listen: String,
        /// Interval between heartbeat verifications (e.g. 60s, 5m), or `off`.
        #[arg(long, default_value = "60s")]
        heartbeat: String,
    },
    /// Everything at a glance: every instance (role, runtime, services and health), every link
    /// with each direction's last verification, open breakers, and runs going on or orphaned.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The chaos suite: real faults injected into real runs of every pipeline, in a world of
    /// its own (its own state database behind a fault proxy, DIVE_HOME and ports), with the
    /// invariants checked after each. Prints a table; exit 1 if any scenario FAILED.
    #[command(subcommand)]
    Chaos(ChaosCommand),
    /// Deploy and operate the hub (code USA unless --code says otherwise).
    #[command(subcommand)]
    Hub(InstanceCommand<HubCode>),
    /// Deploy and operate a national spoke (ISO 3166-1 alpha-3 code; needs a deployed hub).
    #[command(subcommand)]
    Spoke(InstanceCommand<SpokeCode>),
}

/// The hub's code: `--code`, default the registered hub's, else USA.
#[derive(Debug, Clone, Args)]
pub struct HubCode {
    /// ISO 3166-1 alpha-3 code of the hub, any case [default: the registered hub, else USA].
    #[arg(long)]
    pub code: Option<String>,
}

/// A spoke's code.
#[derive(Debug, Clone, Args)]
pub struct SpokeCode {
    /// ISO 3166-1 alpha-3 code of the spoke, any case (e.g. FRA, gbr). `status` without one
    /// shows every spoke; the other commands need it.
    pub code: Option<String>,
}

/// What `dive hub` and `dive spoke` do with an instance.
#[derive(Debug, Subcommand)]
pub enum InstanceCommand<C: Args> {
    /// Deploy the instance: runs the built-in workflow `hub-deploy` / `spoke-deploy` with
    /// `--param code=CODE`, exactly as `dive run workflow` would. Safe to run again.
    Deploy {
        #[command(flatten)]
        code: C,
        /// On failure, leave the run `failed` and resumable instead of rolling back.
        #[arg(long)]
        no_rollback: bool,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// Start a deployed instance again: runs its deploy workflow once more, whose ensure
    /// semantics start what is stopped and leave what runs alone. Uses the instance's runtime.
    Up {
        #[command(flatten)]
        code: C,
        /// On failure, leave the run `failed` and resumable instead of rolling back.
        #[arg(long)]
        no_rollback: bool,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// Stop the instance's services, keeping their data (`up` starts them again).
    Down {
        #[command(flatten)]
        code: C,
        /// Print the instance's status as JSON afterwards.
        #[arg(long)]
        json: bool,
    },
    /// Whether the instance is deployed and its services run: `running`, `stopped`,
    /// `partial` or `not deployed`.
    Status {
        #[command(flatten)]
        code: C,
        #[arg(long)]
        json: bool,
    },
    /// Remove the instance: its services with their data, its secrets, its registration and
    /// port block. Asks first, unless --yes.
    Reset {
        #[command(flatten)]
        code: C,
        /// Do not ask (required when there is no terminal to ask on).
        #[arg(long)]
        yes: bool,
        /// Print what was removed as JSON.
        #[arg(long)]
        json: bool,
        /// Runtime to clean when the instance is not registered (a registered one uses its own).
        #[arg(long, env = "DIVE_RUNTIME", value_parser = parse_runtime)]
        runtime: Option<RuntimeKind>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Run a workflow by built-in name or file path.
    Workflow {
        /// Built-in workflow name (see `dive workflow list`) or path to a YAML file.
        workflow: String,
        /// Workflow parameter, repeatable.
        #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// On failure, leave the run `failed` and resumable instead of rolling back.
        #[arg(long)]
        no_rollback: bool,
        #[command(flatten)]
        exec: ExecArgs,
    },
}

/// Options shared by commands that execute a run.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Print the run as one JSON document on stdout when it ends.
    #[arg(long)]
    pub json: bool,
    /// Most phases running at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Where services run: `local` processes or `docker` containers. A resumed run keeps the
    /// runtime it started with.
    #[arg(long, env = "DIVE_RUNTIME", value_parser = parse_runtime)]
    pub runtime: Option<RuntimeKind>,
    /// Show what the run would change, object by object, and change nothing (no run is
    /// recorded, no lock taken). Exit code 0: nothing would change; 4: something would.
    #[arg(long)]
    pub dry_run: bool,
}

fn parse_runtime(s: &str) -> Result<RuntimeKind, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Runs, newest first; active runs that no process holds are marked orphaned.
    List {
        #[arg(long)]
        json: bool,
        /// Show at most this many runs.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// One run: phases, attempts, compensations and breaker transitions.
    Show {
        run_id: Uuid,
        /// The run's timeline instead: phase starts, attempts, retries with their causes,
        /// breaker transitions, compensations, in the order they happened.
        #[arg(long)]
        events: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop a running run: its process stops scheduling, then rolls back (or leaves it
    /// resumable if it was started with --no-rollback). An orphaned run is marked cancelled.
    Cancel { run_id: Uuid },
}

#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// Built-in workflows.
    List {
        #[arg(long)]
        json: bool,
    },
    /// A workflow's phases and dependencies.
    Show {
        workflow: String,
        #[arg(long, value_enum, default_value_t = ShowFormat::Text)]
        format: ShowFormat,
        /// Parameters to bind (defaults are used otherwise).
        #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
        params: Vec<String>,
    },
    /// Check a workflow file without running anything (exit 2 if it is invalid).
    Validate { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShowFormat {
    Text,
    Json,
    Dot,
    Mermaid,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply pending migrations (every command does this on its own too).
    Migrate,
    /// Where the state database is, its migrations and run counts.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check the state database's own invariants: every run and phase in a legal state for
    /// each other, no lock row without a live holder, no federation link or secret naming an
    /// instance that is not registered. Says what is wrong; exit 1 if anything is.
    Validate {
        #[arg(long)]
        json: bool,
    },
    /// Stop the embedded PostgreSQL cluster (no-op with DIVE_DATABASE_URL).
    Stop,
}

#[derive(Debug, Subcommand)]
pub enum LocksCommand {
    /// Lock keys with their holder and whether the lock is really held.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Forget holders of locks nobody holds any more.
    Clean,
}

#[derive(Debug, Subcommand)]
pub enum ChaosCommand {
    /// Run scenarios (every one, unless --scenario, --family or --ci select), one after the
    /// other, and print the table: scenario, family, outcome (converged, rolled back, FAILED),
    /// time from healing the fault to the run's end, invariants; then where and when each fault
    /// was injected. Needs root (iptables, the services' signals) and toxiproxy.
    Run {
        /// Only this scenario (repeatable; `dive chaos list` names them).
        #[arg(long = "scenario", value_name = "NAME")]
        scenarios: Vec<String>,
        /// Only this fault family (repeatable): network, partition, database, process, secrets.
        #[arg(long = "family", value_name = "F")]
        families: Vec<String>,
        /// Only the CI selection (at least one scenario of every family).
        #[arg(long)]
        ci: bool,
        /// Seeds where and when faults are injected: the same seed, the same schedule.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// DIVE_PORT_BASE of the chaos world's instances (below 32768; apart from your own).
        #[arg(long, default_value_t = 31000)]
        port_base: u16,
        /// The toxiproxy server [default: DIVE_CACHE/tools/toxiproxy-server, as scripts/setup
        /// builds it].
        #[arg(long, env = "DIVE_TOXIPROXY")]
        toxiproxy: Option<std::path::PathBuf>,
        /// Print the report as one JSON document instead of the table.
        #[arg(long)]
        json: bool,
        /// Leave the world as the last scenario left it (state database running, instances
        /// deployed) and print how to point dive at it, to look into a failure.
        #[arg(long)]
        keep: bool,
    },
    /// The catalogue: each scenario's name, family, pipeline, fault and promised outcome.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Engine overhead: a chain of `noop` phases and a fan of 100 ms `sleep` phases.
    Engine {
        /// Phases in the chain.
        #[arg(long, default_value_t = 1000)]
        chain: usize,
        /// Independent sleep phases.
        #[arg(long, default_value_t = 80)]
        parallel: usize,
        /// Concurrency for the parallel case.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// `/metrics` cost: a scratch database on the state database's server gets `--runs` runs
    /// (eight phases each), as many verifications, breaker events and secret versions; prints
    /// the scrape time (median, p95, max) and the peak RSS of a `dive serve` scraped over it.
    /// With linked instances in the state database, also `dive serve`'s own CPU per heartbeat
    /// (`--heartbeat-for` seconds at a 5 s heartbeat), scaled to a 60 s heartbeat.
    Metrics {
        #[arg(long, default_value_t = 10_000)]
        runs: u32,
        /// Scrapes to time.
        #[arg(long, default_value_t = 30)]
        scrapes: usize,
        /// Seconds to run a heartbeat for (0: skip).
        #[arg(long, default_value_t = 30)]
        heartbeat_for: u64,
    },
    /// Federation targets on a deployed hub and spoke CODE: the pair is unlinked and linked
    /// again (timed: a link from nothing), then single brokered logins one after another, then
    /// `federation-verify` (every test user, both directions). Logins across the pair fail
    /// while it is unlinked (about two seconds).
    Federation {
        code: String,
        /// Single logins to time (hub user 1 at the spoke).
        #[arg(long, default_value_t = 10)]
        logins: usize,
    },
    /// Secret rotation on a deployed, linked instance CODE: each kind rotated in turn (the
    /// `secret-rotation` workflow) while a login probe runs — a brokered login in each direction
    /// of each link of CODE and a direct login at each instance, without pause, each with the
    /// password the store holds at that moment. Prints each rotation's duration and the probe's
    /// attempts, failures and worst latency. The `users` kind leaves CODE's own users out of the
    /// probe (their passwords are what changes). With `--all` instead of CODE: one run of
    /// `secret-rotation-all` rotating every kind given together (not `users`: every probed
    /// password would change), the probe covering every link.
    #[command(group = clap::ArgGroup::new("target").required(true).args(["code", "all"]))]
    Rotation {
        code: Option<String>,
        /// Every deployed instance in one run.
        #[arg(long)]
        all: bool,
        /// Kinds to rotate, in this order (repeatable). Default: federation, signing-key, admin
        /// and users (without users for --all).
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// Grace period of the previous signing key.
        #[arg(long, default_value = "5s")]
        grace: String,
        /// Probe workers logging in side by side.
        #[arg(long, default_value_t = 4)]
        workers: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Print the CA certificate (PEM; created on first use) for a browser, curl
    /// (`--cacert`) or another machine to trust. Its private key stays in the secret store.
    Show {
        /// `{pem, not_after}` instead of the bare PEM.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Secret names with their versions and dates; never values.
    List {
        #[arg(long)]
        json: bool,
    },
    /// A secret's metadata, or with --reveal its value alone on stdout.
    #[command(disable_version_flag = true)]
    Show {
        /// e.g. usa/keycloak/admin-password
        name: String,
        /// Print the value (the latest version unless --version is given).
        #[arg(long)]
        reveal: bool,
        /// Which version to reveal (also `--secret-version`).
        #[arg(
            long = "version",
            alias = "secret-version",
            value_name = "N",
            requires = "reveal"
        )]
        secret_version: Option<u32>,
    },
    /// Rotate the secrets of instance CODE and of its federation links (runs the built-in
    /// workflow `secret-rotation` under the locks of CODE and of every instance linked with it).
    /// Each new version is committed to the store first, rolled out while the previous one stays
    /// accepted, proven by real logins, and only then is the previous one dropped; a failure
    /// rolls both sides back. Safe to call from a timer with --older-than.
    Rotate {
        /// ISO 3166-1 alpha-3 code of the instance (any case).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        code: Option<String>,
        /// Every registered instance in one run (built-in workflow `secret-rotation-all`): a
        /// child run each, the spokes side by side, then the hub.
        #[arg(long)]
        all: bool,
        /// Rotate only this kind (repeatable): federation (the client secret of each direction
        /// of each link), signing-key (the realm's RSA signing key), admin (Keycloak's admin
        /// password), users (the test users' passwords), database (the PostgreSQL passwords;
        /// Keycloak restarts), certificate (Keycloak's HTTPS certificate, renewed in place).
        /// Default: every kind.
        #[arg(long = "only", value_name = "KIND")]
        only: Vec<String>,
        /// Rotate only secrets whose latest version is older than this (e.g. 30d, 12h).
        #[arg(long, value_name = "DURATION")]
        older_than: Option<String>,
        /// Versions of each secret kept afterwards, for rollback (at least 2).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..))]
        keep: u32,
        /// How long a replaced signing key still validates tokens before it is disabled
        /// (default: the realm's longest token lifetime).
        #[arg(long, value_name = "DURATION")]
        grace: Option<String>,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// Create every secret instance CODE needs and lacks (its own and its links'); change none
    /// that exists. Says what it created; exit 0 either way.
    Ensure {
        /// ISO 3166-1 alpha-3 code of the instance (any case).
        code: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum FederationCommand {
    /// Link the hub and spoke CODE in both directions (runs the `federation-link` workflow).
    /// Safe to run again: it reconciles what differs.
    Link {
        /// ISO 3166-1 alpha-3 code of the spoke (any case); the hub is the registered one.
        code: String,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// Remove the link in both directions and its secrets.
    Unlink {
        /// ISO 3166-1 alpha-3 code of the spoke (any case); the hub is the registered one.
        code: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// Log in through the federation in both directions as every test user, and compare the
    /// claims with the users' attributes at home. Exit 0 only if every login is right.
    Verify {
        /// ISO 3166-1 alpha-3 code of the spoke (any case); the hub is the registered one.
        code: String,
        /// Print one JSON document on stdout instead of the text report.
        #[arg(long)]
        json: bool,
    },
    /// Look for drift between what runs and what dive would create, in three layers: runtime
    /// (services of both instances up and healthy), config (clients, secrets, identity
    /// providers, mappers, flows, scopes) and live (one login each way). Changes nothing; exit 0
    /// when nothing drifted, 1 when something did. `dive federation link CODE` repairs it.
    Drift {
        /// ISO 3166-1 alpha-3 code of the spoke (any case); the hub is the registered one.
        code: String,
        /// Print one JSON document on stdout instead of the text report.
        #[arg(long)]
        json: bool,
    },
    /// Every linked pair, the last verification of each direction, and whether the pair's
    /// secret versions agree.
    Status {
        /// Print one JSON document on stdout instead of the text report.
        #[arg(long)]
        json: bool,
    },
}
