//! Fault injectors. Each returns a [`Heal`]: the fault lasts until it is healed, explicitly or
//! when the guard is dropped — also when the scenario failed half-way.

use crate::proxy::PROXY_GID;
use crate::world::{STATE_DB_PROXY, World, signal_pid};
use dive_pgcluster::StopMode;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// Undoes a fault once: on [`Heal::heal`] or on drop.
#[must_use = "the fault lasts until this is healed or dropped"]
pub struct Heal<'w> {
    undo: Option<Box<dyn FnOnce() -> Result<(), String> + 'w>>,
}

impl<'w> Heal<'w> {
    pub fn new(undo: impl FnOnce() -> Result<(), String> + 'w) -> Self {
        Heal {
            undo: Some(Box::new(undo)),
        }
    }

    /// A fault with nothing to undo (a backend terminated, a process killed).
    pub fn nothing() -> Self {
        Heal { undo: None }
    }

    pub fn heal(mut self) -> Result<(), String> {
        self.undo.take().map_or(Ok(()), |undo| undo())
    }
}

impl Drop for Heal<'_> {
    fn drop(&mut self) {
        if let Some(undo) = self.undo.take()
            && let Err(e) = undo()
        {
            eprintln!("chaos: healing a fault failed: {e}");
        }
    }
}

// --- the network, through toxiproxy ---------------------------------------------------------

/// A toxic on the link between dive and the state database.
pub fn state_db_toxic<'w>(
    world: &'w World,
    toxic: &str,
    attributes: Value,
) -> Result<Heal<'w>, String> {
    world.proxy.add(STATE_DB_PROXY, toxic, attributes)?;
    Ok(Heal::new(move || world.proxy.reset()))
}

/// The link between dive and the state database cut: the proxy disabled.
pub fn state_db_cut(world: &World) -> Result<Heal<'_>, String> {
    world.proxy.set_enabled(STATE_DB_PROXY, false)?;
    Ok(Heal::new(move || world.proxy.reset()))
}

// --- partitions and routes, with iptables ------------------------------------------------------

/// The iptables chain (in the filter and the nat table) holding this suite's rules, jumped to
/// from OUTPUT. Rules only ever match loopback traffic to one port.
const CHAIN: &str = "DIVE_CHAOS";

fn iptables(table: &str, args: &[&str]) -> Result<(), String> {
    crate::world::run_tool(
        Command::new("iptables")
            .args(["-w", "-t", table])
            .args(args),
        &format!(
            "iptables -t {table} {} (scripts/setup installs it)",
            args.join(" ")
        ),
    )
}

/// Removes the suite's chains and their jumps (what an interrupted earlier run left, too).
pub fn clear_iptables() -> Result<(), String> {
    for table in ["filter", "nat"] {
        while iptables(table, &["-D", "OUTPUT", "-j", CHAIN]).is_ok() {}
        let _ = iptables(table, &["-F", CHAIN]);
        let _ = iptables(table, &["-X", CHAIN]);
    }
    Ok(())
}

/// Adds `rule` to the suite's chain in `table`; the returned guard deletes it again.
fn add_rule(table: &'static str, rule: Vec<String>) -> Result<Heal<'static>, String> {
    if iptables(table, &["-L", CHAIN, "-n"]).is_err() {
        iptables(table, &["-N", CHAIN])?;
        iptables(table, &["-I", "OUTPUT", "-j", CHAIN])?;
    }
    let apply = move |op: &'static str| {
        let mut a = vec![op, CHAIN];
        a.extend(rule.iter().map(String::as_str));
        iptables(table, &a)
    };
    apply("-A")?;
    Ok(Heal::new(move || apply("-D")))
}

/// Closes every established loopback connection to `port` (the client's side), with `ss -K`.
fn kill_connections(port: u16) -> Result<(), String> {
    let port = format!(":{port}");
    crate::world::run_tool(
        Command::new("ss").args(["-K", "-t", "dst", "127.0.0.1", "dport", "=", &port]),
        "ss -K",
    )
}

/// How a partition answers: silently dropped packets (connections hang until their timeouts),
/// or resets (connections fail at once).
#[derive(Clone, Copy, Debug)]
pub enum Partition {
    Drop,
    Reject,
}

impl Partition {
    /// The iptables target of a rule.
    fn target(self) -> Vec<String> {
        match self {
            Partition::Drop => vec!["-j".into(), "DROP".into()],
            Partition::Reject => ["-j", "REJECT", "--reject-with", "tcp-reset"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// Loopback traffic to `port` partitioned away, established connections included.
pub fn partition_port(port: u16, how: Partition) -> Result<Heal<'static>, String> {
    let mut rule: Vec<String> = ["-o", "lo", "-p", "tcp", "--dport", &port.to_string()]
        .map(String::from)
        .to_vec();
    rule.extend(how.target());
    add_rule("filter", rule)
}

/// Every loopback connection to a service's `port` — but the proxy's own — sent through a
/// toxiproxy proxy (a DNAT rule; established connections are closed so that their clients
/// reconnect through it). Faults are added to the route; dropping it removes the rule, so new
/// connections go direct again, while those opened through the proxy (clean by then) go on
/// through it: taking the route away is not a fault of its own.
pub struct Route<'w> {
    world: &'w World,
    name: String,
    rule: Option<Heal<'static>>,
}

pub fn route<'w>(world: &'w World, service: &str, port: u16) -> Result<Route<'w>, String> {
    static ROUTES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = ROUTES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // A proxy of its own: one left by an earlier route still carries that route's connections.
    let name = format!("{service}-{n}");
    let listen = world.proxy.create(&name, port).map_err(|e| e.to_string())?;
    let rule = add_rule(
        "nat",
        [
            "-p",
            "tcp",
            "-d",
            "127.0.0.1",
            "--dport",
            &port.to_string(),
            "-m",
            "owner",
            "!",
            "--gid-owner",
            &PROXY_GID.to_string(),
            "-j",
            "DNAT",
            "--to-destination",
            &format!("127.0.0.1:{listen}"),
        ]
        .map(String::from)
        .to_vec(),
    )?;
    kill_connections(port)?;
    Ok(Route {
        world,
        name,
        rule: Some(rule),
    })
}

impl<'w> Route<'w> {
    /// A toxic on this route, both ways.
    pub fn toxic(&self, toxic: &str, attributes: Value) -> Result<Heal<'w>, String> {
        self.world.proxy.add(&self.name, toxic, attributes)?;
        let world = self.world;
        Ok(Heal::new(move || world.proxy.reset()))
    }

    /// This route cut: the proxy disabled.
    pub fn cut(&self) -> Result<Heal<'w>, String> {
        self.world.proxy.set_enabled(&self.name, false)?;
        let world = self.world;
        Ok(Heal::new(move || world.proxy.reset()))
    }
}

impl Drop for Route<'_> {
    fn drop(&mut self) {
        if let Some(rule) = self.rule.take()
            && let Err(e) = rule.heal()
        {
            eprintln!("chaos: removing the route through {}: {e}", self.name);
        }
    }
}

// --- the state database -----------------------------------------------------------------------

/// The state database stopped; healed by starting it again.
pub fn state_db_stop(world: &World, mode: StopMode) -> Result<Heal<'_>, String> {
    world.state.stop(mode).map_err(|e| e.to_string())?;
    Ok(Heal::new(move || {
        world.state.start().map_err(|e| e.to_string())
    }))
}

/// Every backend serving dive's database terminated (the checks of this suite use their own).
pub fn state_db_terminate(world: &World) -> Result<usize, String> {
    let out = world.sql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        world.db
    ))?;
    Ok(out.trim().parse().unwrap_or(0))
}

/// Every connection slot of the state database's server taken (idle sessions on database
/// `postgres`, as a superuser so that the reserved slots go too) and dive's sessions
/// terminated: dive cannot reconnect until the slots are given back.
pub fn state_db_slots_taken(world: &World) -> Result<(Heal<'_>, usize), String> {
    let port = world.state.port().map_err(|e| e.to_string())?;
    let mut held = Vec::new();
    while held.len() < 2000 {
        match open_session(port) {
            Ok(stream) => held.push(stream),
            Err(_) if !held.is_empty() => break,
            Err(e) => return Err(e),
        }
    }
    let taken = held.len();
    // Terminating dive's sessions (from one of ours: there is no slot left for another) frees
    // slots that ours then take.
    simple_query(
        &mut held[0],
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            world.db
        ),
    )?;
    while let Ok(stream) = open_session(port) {
        held.push(stream);
    }
    Ok((
        Heal::new(move || {
            drop(held);
            Ok(())
        }),
        taken,
    ))
}

/// A PostgreSQL session as user postgres on database postgres (trust authentication on
/// loopback), held open as long as the stream lives.
fn open_session(port: u16) -> Result<std::net::TcpStream, String> {
    use std::io::Write;
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let params = b"user\0postgres\0database\0postgres\0\0";
    let mut startup = Vec::new();
    startup.extend_from_slice(&((8 + params.len()) as u32).to_be_bytes());
    startup.extend_from_slice(&196608u32.to_be_bytes()); // protocol 3.0
    startup.extend_from_slice(params);
    stream.write_all(&startup).map_err(|e| e.to_string())?;
    // The server says ReadyForQuery once the session is set up, or refuses it (too many
    // clients) with an error.
    until_ready(&mut stream, "a session")?;
    Ok(stream)
}

/// Runs `sql` on a session of [`open_session`] (simple query protocol) and waits for its end.
fn simple_query(stream: &mut std::net::TcpStream, sql: &str) -> Result<(), String> {
    use std::io::Write;
    let mut message = vec![b'Q'];
    message.extend_from_slice(&((4 + sql.len() + 1) as u32).to_be_bytes());
    message.extend_from_slice(sql.as_bytes());
    message.push(0);
    stream.write_all(&message).map_err(|e| e.to_string())?;
    until_ready(stream, sql)
}

/// Reads backend messages until ReadyForQuery ('Z'); an error message ('E') fails `what`.
fn until_ready(stream: &mut std::net::TcpStream, what: &str) -> Result<(), String> {
    use std::io::Read;
    // Each message: a type byte, then a length that counts itself.
    loop {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).map_err(|e| e.to_string())?;
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        stream.read_exact(&mut body).map_err(|e| e.to_string())?;
        match header[0] {
            b'Z' => return Ok(()),
            b'E' => return Err(format!("{what} failed: {}", String::from_utf8_lossy(&body))),
            _ => {}
        }
    }
}

/// The state database's file system full: one file takes every free block. Healed by removing
/// it and starting the server again if it gave up meanwhile (a server that cannot write its
/// WAL stops).
pub fn state_db_disk_full(world: &World) -> Result<Heal<'_>, String> {
    let filler = crate::world::state_fs(world).join("filler");
    let dir = crate::world::state_fs(world);
    // SAFETY: statvfs(2) fills the struct we pass; the path is a valid C string.
    let free = unsafe {
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|e| e.to_string())?;
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut st) != 0 {
            return Err(format!(
                "statvfs {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        st.f_bavail as u64 * st.f_frsize as u64
    };
    let file = std::fs::File::create(&filler).map_err(|e| format!("{}: {e}", filler.display()))?;
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate(2) on a file we just created and hold open.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, free as libc::off_t) } != 0 {
        return Err(format!(
            "fallocate {}: {}",
            filler.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(Heal::new(move || {
        std::fs::remove_file(&filler).map_err(|e| format!("{}: {e}", filler.display()))?;
        world.state.ensure_running().map_err(|e| e.to_string())
    }))
}

/// dive's database read-only: new transactions cannot write, and every open session is
/// terminated so that it reconnects into the read-only default. Healed the same way back.
pub fn state_db_read_only(world: &World) -> Result<Heal<'_>, String> {
    let set = |on: bool| -> Result<(), String> {
        // From another database: a session of dive's own would itself be read-only by now.
        world
            .state
            .psql(
                "postgres",
                &format!(
                    "ALTER DATABASE {} SET default_transaction_read_only = {on}",
                    world.db
                ),
            )
            .map_err(|e| e.to_string())?;
        state_db_terminate(world).map(|_| ())
    };
    set(true)?;
    Ok(Heal::new(move || set(false)))
}

// --- processes --------------------------------------------------------------------------------

/// A service of an instance (its whole process group) stopped with SIGSTOP; healed by SIGCONT.
pub fn service_freeze<'w>(world: &'w World, code: &str, service: &str) -> Result<Heal<'w>, String> {
    let pid = world.service_pid(code, service)?;
    signal_pid(-pid, libc::SIGSTOP)?;
    Ok(Heal::new(move || signal_pid(-pid, libc::SIGCONT)))
}

/// A service of an instance killed with SIGKILL (its whole process group).
pub fn service_kill(world: &World, code: &str, service: &str) -> Result<(), String> {
    let pid = world.service_pid(code, service)?;
    signal_pid(-pid, libc::SIGKILL)
}

// --- secrets ----------------------------------------------------------------------------------

/// The master key file moved away; healed by putting it back.
pub fn master_key_hidden(world: &World) -> Result<Heal<'_>, String> {
    let key = world.home().join("master.key");
    let aside: PathBuf = world.scratch().join("master.key.aside");
    std::fs::rename(&key, &aside).map_err(|e| format!("moving {}: {e}", key.display()))?;
    Ok(Heal::new(move || {
        std::fs::rename(&aside, &key).map_err(|e| format!("restoring {}: {e}", key.display()))
    }))
}

/// Every version of secret `name` deleted from the store (behind dive's back).
pub fn secret_delete(world: &World, name: &str) -> Result<usize, String> {
    let out = world.sql(&format!(
        "WITH d AS (DELETE FROM secrets WHERE name = '{name}' RETURNING 1) SELECT count(*) FROM d"
    ))?;
    Ok(out.trim().parse().unwrap_or(0))
}

/// The state database's server killed with SIGKILL (the postmaster only: its backends notice and
/// exit, as after a crash); healed by starting it again (crash recovery).
pub fn state_db_postmaster_kill(world: &World) -> Result<Heal<'_>, String> {
    let pid = postmaster(world)?;
    signal_pid(pid, libc::SIGKILL)?;
    Ok(Heal::new(move || {
        // A new postmaster refuses to start while a backend of the old one still holds its
        // shared memory; they exit within moments of noticing.
        crate::world::wait_for(
            "the killed postmaster's backends are gone",
            std::time::Duration::from_secs(30),
            || children_of(pid).is_empty().then_some(()),
        )?;
        world.state.ensure_running().map_err(|e| e.to_string())
    }))
}

/// Every process of the state database's server frozen (SIGSTOP: the postmaster, then its
/// backends and workers): connections open but nothing answers. Healed by SIGCONT, backends
/// first.
pub fn state_db_freeze(world: &World) -> Result<Heal<'_>, String> {
    let pid = postmaster(world)?;
    signal_pid(pid, libc::SIGSTOP)?;
    // The postmaster, frozen, forks no new backend: the list is complete.
    let children = children_of(pid);
    for child in &children {
        let _ = signal_pid(*child, libc::SIGSTOP);
    }
    Ok(Heal::new(move || {
        for child in &children {
            let _ = signal_pid(*child, libc::SIGCONT);
        }
        signal_pid(pid, libc::SIGCONT)
    }))
}

/// The state database's postmaster.
fn postmaster(world: &World) -> Result<i32, String> {
    world
        .state
        .postmaster_pid()
        .ok_or_else(|| "the state database is not running".to_string())
}

/// Pids whose parent is `parent` (from /proc).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // Field 4 of /proc/PID/stat, after the parenthesised command name.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 2..];
                    rest.split(' ').nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

// --- the Docker runtime -----------------------------------------------------------------------

/// Runs `docker ARGS`; returns its standard output.
fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {}: {e} (scripts/setup installs it)", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The container of service `service` of instance `code` (the Docker runtime's naming).
pub fn container(code: &str, service: &str) -> String {
    format!("dive-{}-{service}", code.to_lowercase())
}

/// `docker kill` (SIGKILL) of a container.
pub fn container_kill(code: &str, service: &str) -> Result<(), String> {
    docker(&["kill", &container(code, service)]).map(|_| ())
}

/// `docker pause` of a container (its cgroup frozen); healed by `docker unpause`.
pub fn container_pause(code: &str, service: &str) -> Result<Heal<'static>, String> {
    let name = container(code, service);
    docker(&["pause", &name])?;
    Ok(Heal::new(move || docker(&["unpause", &name]).map(|_| ())))
}

/// The network on which instances' Keycloaks reach each other (the broker back-channel).
pub const FEDERATION_NETWORK: &str = "dive-federation";

/// A container disconnected from a Docker network; healed by connecting it again with the
/// aliases it had.
pub fn network_disconnect(
    code: &str,
    service: &str,
    network: &str,
) -> Result<Heal<'static>, String> {
    let name = container(code, service);
    let aliases = docker(&[
        "inspect",
        "--format",
        &format!("{{{{json (index .NetworkSettings.Networks \"{network}\").Aliases}}}}"),
        &name,
    ])?;
    let aliases: Vec<String> = serde_json::from_str(&aliases).unwrap_or_default();
    docker(&["network", "disconnect", network, &name])?;
    let network = network.to_string();
    Ok(Heal::new(move || {
        let mut args = vec!["network".to_string(), "connect".to_string()];
        for alias in aliases.iter().filter(|a| **a != name) {
            args.extend(["--alias".to_string(), alias.clone()]);
        }
        args.extend([network.clone(), name.clone()]);
        docker(&args.iter().map(String::as_str).collect::<Vec<_>>()).map(|_| ())
    }))
}

/// Inside the network namespace of one container (`from`), TCP to another container (`to`) on
/// `port`, over `network`, dropped or rejected by iptables: a partition of that one path (a
/// Keycloak's broker back-channel to its partner) while every other path stays up. Healed by
/// deleting the rule.
pub fn netns_partition(
    from: &str,
    to: &str,
    network: &str,
    port: u16,
    how: Partition,
) -> Result<Heal<'static>, String> {
    let pid = docker(&["inspect", "--format", "{{.State.Pid}}", from])?;
    let ip = docker(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
        to,
    ])?;
    if ip.is_empty() {
        return Err(format!("{to} has no address on {network}"));
    }
    let mut rule: Vec<String> = [
        "OUTPUT",
        "-d",
        &ip,
        "-p",
        "tcp",
        "--dport",
        &port.to_string(),
    ]
    .map(String::from)
    .to_vec();
    rule.extend(how.target());
    let apply = move |op: &str| {
        let mut args: Vec<String> = ["-t", pid.as_str(), "-n", "iptables", "-w", op]
            .map(String::from)
            .to_vec();
        args.extend(rule.iter().cloned());
        crate::world::run_tool(
            Command::new("nsenter").args(&args),
            &format!("nsenter {}", args.join(" ")),
        )
    };
    apply("-A")?;
    Ok(Heal::new(move || apply("-D")))
}

/// Instance codes (lower case) of the dive-managed containers on this Docker engine; empty
/// when there is no Docker engine to ask.
pub fn container_instances() -> Vec<String> {
    docker(&[
        "ps",
        "-a",
        "--filter",
        "label=dive.managed",
        "--format",
        "{{.Label \"dive.instance\"}}",
    ])
    .map(|out| out.lines().map(str::to_string).collect())
    .unwrap_or_default()
}

/// Whether a container exists and runs.
pub fn container_running(name: &str) -> bool {
    docker(&["inspect", "--format", "{{.State.Running}}", name]).is_ok_and(|s| s == "true")
}
