//! Against the real PostgreSQL binaries of the machine (`/usr/lib/postgresql/15/bin` or
//! `$DIVE_PG_BIN`). Each test has its own cluster in its own temporary directory.

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use dive_pgcluster::{Cluster, StopMode};

/// A cluster in a fresh temporary directory, stopped on drop — also when the test fails, so no
/// server outlives the test run. (Drop runs before the fields drop, so the server is gone
/// before its directory is removed.)
struct TestCluster {
    cluster: Cluster,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        // The postgres user must get through it when we are root (mktemp -d makes 0700).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod the temporary directory");
        let cluster = Cluster::new(dir.path().join("pg"));
        TestCluster { cluster, _dir: dir }
    }
}

impl std::ops::Deref for TestCluster {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.stop(StopMode::Immediate) {
            eprintln!("could not stop the test cluster: {e}");
        }
    }
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = f();
    eprintln!("{what}: {:?}", started.elapsed());
    value
}

fn postmaster_pid(data: &Path) -> i32 {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).expect("read postmaster.pid");
    text.lines().next().unwrap().trim().parse().unwrap()
}

/// Gone or a zombie: either way it serves nothing any more.
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').unwrap().1.split_whitespace().next() == Some("Z"),
        Err(_) => true,
    }
}

#[test]
fn ensure_running_twice_is_fast_and_keeps_the_port() {
    let c = TestCluster::new();
    timed("first ensure_running (initdb + start)", || {
        c.ensure_running()
    })
    .unwrap();
    assert!(c.is_running());
    let port = c.port().unwrap();
    assert!(c.data_dir().join("PG_VERSION").is_file());
    assert!(c.log_path().is_file());

    let started = Instant::now();
    c.ensure_running().unwrap();
    let second = started.elapsed();
    eprintln!("second ensure_running: {second:?}");
    assert!(second < Duration::from_millis(20), "took {second:?}");
    assert_eq!(c.port().unwrap(), port);
    assert_eq!(
        c.url("dive").unwrap(),
        format!("postgres://postgres@127.0.0.1:{port}/dive")
    );

    // Daemonised: not our child and not in our session, so it outlives this process.
    let pid = postmaster_pid(&c.data_dir());
    // SAFETY: plain syscalls on process ids.
    let (our_sid, its_sid) = unsafe { (libc::getsid(0), libc::getsid(pid)) };
    assert_ne!(our_sid, its_sid, "server runs in our session");
}

#[test]
fn create_database_then_connect() {
    let c = TestCluster::new();
    c.ensure_running().unwrap();
    timed("create_database", || c.create_database("dive_test")).unwrap();
    // Idempotent.
    c.create_database("dive_test").unwrap();
    assert!(c.database_exists("dive_test").unwrap());
    assert!(!c.database_exists("nope").unwrap());

    let port = c.port().unwrap();
    TcpStream::connect(("127.0.0.1", port)).expect("TCP connect to the cluster");
    assert_eq!(
        c.psql("dive_test", "SELECT current_database()").unwrap(),
        "dive_test"
    );

    // The settings benchmarks and callers rely on.
    let show = |name: &str| c.psql("postgres", &format!("SHOW {name}")).unwrap();
    assert_eq!(show("fsync"), "on");
    assert_eq!(show("synchronous_commit"), "on");
    assert_eq!(show("max_connections"), "200");
    assert_eq!(show("shared_buffers"), "128MB");
    assert_eq!(show("listen_addresses"), "127.0.0.1");
    assert_eq!(show("server_encoding"), "UTF8");
    let data = std::fs::canonicalize(c.data_dir()).unwrap();
    assert_eq!(show("unix_socket_directories"), data.to_str().unwrap());
    assert!(data.join(format!(".s.PGSQL.{port}")).exists());
}

#[test]
fn immediate_stop_then_ensure_running_keeps_the_data() {
    let c = TestCluster::new();
    c.ensure_running().unwrap();
    let port = c.port().unwrap();
    c.create_database("x").unwrap();
    c.psql("x", "CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
        .unwrap();

    timed("stop(Immediate)", || c.stop(StopMode::Immediate)).unwrap();
    assert!(!c.is_running());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    // Stopping a stopped cluster is fine.
    c.stop(StopMode::Immediate).unwrap();
    c.stop(StopMode::Fast).unwrap();

    timed("ensure_running after stop (crash recovery)", || {
        c.ensure_running()
    })
    .unwrap();
    assert!(c.is_running());
    assert_eq!(c.port().unwrap(), port);

    let bin = dive_pgcluster::find_bin_dir().unwrap();
    let out = Command::new(bin.join("psql"))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
        ])
        .args([
            "-d",
            "postgres",
            "-Atc",
            "select 1 from pg_database where datname='x'",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    assert_eq!(c.psql("x", "SELECT v FROM t").unwrap(), "42");

    timed("stop(Fast)", || c.stop(StopMode::Fast)).unwrap();
    assert!(!c.is_running());
    c.start().unwrap();
    assert!(c.is_running());
}

#[test]
fn concurrent_first_ensure_running_both_succeed() {
    let c = TestCluster::new();
    let barrier = Barrier::new(2);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    c.ensure_running()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for result in results {
        result.unwrap();
    }
    assert!(c.is_running());
    c.create_database("after_race").unwrap();
}

#[test]
fn killed_server_and_half_made_data_dir_do_not_prevent_start() {
    let c = TestCluster::new();
    // An interrupted init: a data directory without PG_VERSION.
    std::fs::create_dir_all(c.data_dir()).unwrap();
    std::fs::write(c.data_dir().join("junk"), "x").unwrap();
    c.ensure_running().unwrap();
    assert!(!c.data_dir().join("junk").exists());
    c.create_database("survivor").unwrap();

    // An outage: the postmaster dies without cleaning up, leaving postmaster.pid behind.
    let pid = postmaster_pid(&c.data_dir());
    // SAFETY: signalling the server we started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !process_gone(pid) {
        assert!(Instant::now() < deadline, "postmaster {pid} did not die");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(c.data_dir().join("postmaster.pid").exists());
    assert!(!c.is_running());

    timed("ensure_running after SIGKILL", || c.ensure_running()).unwrap();
    assert!(c.is_running());
    assert!(c.database_exists("survivor").unwrap());
}

#[test]
fn start_without_init_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::new(dir.path().join("none"));
    let err = c.start().unwrap_err().to_string();
    assert!(err.contains("not been initialised"), "{err}");
    assert!(!c.is_running());
    c.stop(StopMode::Fast).unwrap();
    assert!(c.port().is_err());
}

/// As root the server runs as `postgres`, which must get through a 0700 `mktemp -d` directory:
/// we add o+x to it, and nothing else.
#[test]
fn as_root_a_private_parent_gets_only_o_x() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: nothing to check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // What `mktemp -d` makes (tempfile's own default depends on the umask).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let c = Cluster::new(dir.path().join("pg"));
    let result = c.ensure_running();
    let stopped = c.stop(StopMode::Immediate);
    result.unwrap();
    stopped.unwrap();
    assert_eq!(mode(dir.path()), 0o701);
}
