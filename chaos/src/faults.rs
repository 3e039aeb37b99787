//! Fault injectors. Each returns a [`Heal`]: the fault lasts until it is healed, explicitly or
//! when the guard is dropped — also when the scenario failed half-way.

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

// --- partitions, with iptables ----------------------------------------------------------------

/// The iptables chain holding this suite's rules, jumped to from OUTPUT. Only loopback traffic
/// to one port at a time is ever matched.
const CHAIN: &str = "DIVE_CHAOS";

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .map_err(|e| format!("iptables (scripts/setup installs it): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes the suite's chain and its jump (what an interrupted earlier run left, too).
pub fn clear_partitions() -> Result<(), String> {
    while iptables(&["-D", "OUTPUT", "-j", CHAIN]).is_ok() {}
    let _ = iptables(&["-F", CHAIN]);
    let _ = iptables(&["-X", CHAIN]);
    Ok(())
}

/// How a partition answers: silently dropped packets (connections hang until their timeouts),
/// or resets (connections fail at once).
#[derive(Clone, Copy, Debug)]
pub enum Partition {
    Drop,
    Reject,
}

/// Loopback traffic to `port` partitioned away, established connections included.
pub fn partition_port(port: u16, how: Partition) -> Result<Heal<'static>, String> {
    clear_partitions()?;
    iptables(&["-N", CHAIN])?;
    iptables(&["-I", "OUTPUT", "-j", CHAIN])?;
    let port = port.to_string();
    let mut rule = vec!["-A", CHAIN, "-o", "lo", "-p", "tcp", "--dport", &port];
    match how {
        Partition::Drop => rule.extend(["-j", "DROP"]),
        Partition::Reject => rule.extend(["-j", "REJECT", "--reject-with", "tcp-reset"]),
    }
    iptables(&rule)?;
    Ok(Heal::new(clear_partitions))
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
