//! The local runtime against real processes: ensure is idempotent, a changed spec recreates,
//! a killed process is seen, stop/remove work, and a reused pid is never taken for ours.

use dive_runtime::local::LocalRuntime;
use dive_runtime::{
    DataMount, Ensured, Health, PortSpec, Runtime, ServiceFile, ServiceSpec, ServiceState,
};
use std::collections::BTreeMap;
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A small HTTP server that serves its data directory.
fn web(instance: &str, port: u16) -> ServiceSpec {
    ServiceSpec {
        instance: instance.into(),
        name: "web".into(),
        image: String::new(),
        command: vec![
            "python3".into(),
            "-m".into(),
            "http.server".into(),
            "{port:http}".into(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--directory".into(),
            "{data:www}".into(),
        ],
        env: BTreeMap::from([("TOKEN_FILE".to_string(), "{file:token}".to_string())]),
        files: BTreeMap::from([("token".to_string(), ServiceFile::new("not-shown"))]),
        ports: vec![PortSpec {
            name: "http".into(),
            container: 8000,
            host: port,
        }],
        data: vec![DataMount {
            volume: "www".into(),
            target: "/srv".into(),
        }],
        health: Some(Health::Http {
            port: "http".into(),
            path: "/".into(),
            tls: false,
        }),
        ready_timeout: Duration::from_secs(20),
        run_as: None,
        init: None,
        networks: vec![],
    }
}

fn pid_of(home: &std::path::Path, instance: &str) -> i32 {
    let text =
        std::fs::read_to_string(home.join(format!("instances/{instance}/services/web.json")))
            .unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["pid"]
        .as_i64()
        .unwrap() as i32
}

/// Whether `pid` is a live process (a zombie waiting to be reaped is not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

#[tokio::test]
async fn ensure_is_idempotent_and_a_changed_spec_recreates() {
    let home = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(home.path());
    let spec = web("t1", free_port());
    assert_eq!(rt.ensure_service(&spec).await.unwrap(), Ensured::Created);
    let pid = pid_of(home.path(), "t1");
    assert_eq!(rt.ensure_service(&spec).await.unwrap(), Ensured::Unchanged);
    assert_eq!(
        pid_of(home.path(), "t1"),
        pid,
        "an identical service is left alone"
    );
    assert_eq!(
        rt.status("t1", "web").await.unwrap().state,
        ServiceState::Running
    );

    let mut changed = spec.clone();
    changed.env.insert("MODE".into(), "new".into());
    assert_eq!(
        rt.ensure_service(&changed).await.unwrap(),
        Ensured::Recreated
    );
    let new_pid = pid_of(home.path(), "t1");
    assert_ne!(new_pid, pid);
    assert!(!alive(pid), "the old process is gone");

    // A changed secret value recreates too (only its digest is stored).
    let mut rotated = changed.clone();
    rotated
        .files
        .insert("token".into(), ServiceFile::new("rotated"));
    assert_eq!(
        rt.ensure_service(&rotated).await.unwrap(),
        Ensured::Recreated
    );
    // The secret reaches the service as a file only it reads, never in its environment.
    let pid = pid_of(home.path(), "t1");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("rotated"), "{environ}");
    let path = environ
        .split('\0')
        .find_map(|v| v.strip_prefix("TOKEN_FILE="))
        .expect("the file's path is in the environment")
        .to_string();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "rotated");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600, "{path}");
    let dir = std::path::Path::new(&path).parent().unwrap();
    assert_eq!(mode(dir.to_str().unwrap()), 0o700);
    let stored =
        std::fs::read_to_string(home.path().join("instances/t1/services/web.json")).unwrap();
    assert!(!stored.contains("rotated") && !stored.contains("not-shown"));

    rt.remove("t1", "web", &["www".to_string()]).await.unwrap();
    assert_eq!(
        rt.status("t1", "web").await.unwrap().state,
        ServiceState::Missing
    );
    assert!(!home.path().join("instances/t1/data/www").exists());
    assert!(!dir.exists(), "the secret files go with the service");
}

/// A live file is written in place on the running service only when its content changed: a new
/// stamp alone (every deploy makes one) is no reason, since each rewrite makes Keycloak take the
/// certificate up again and drop the TLS handshakes under way.
#[tokio::test]
async fn a_live_file_is_rewritten_only_when_its_content_changes() {
    let home = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(home.path());
    let mut spec = web("t5", free_port());
    let cert = |body: &str| ServiceFile::live_stamped(&format!("-----BEGIN X-----\n{body}\n"));
    spec.files.insert("tls.crt".into(), cert("one"));
    assert_eq!(rt.ensure_service(&spec).await.unwrap(), Ensured::Created);
    let path = home.path().join("instances/t5/services/web.files/tls.crt");
    let first = std::fs::read_to_string(&path).unwrap();
    assert!(first.ends_with("one\n"), "{first}");
    let pid = pid_of(home.path(), "t5");

    std::thread::sleep(Duration::from_millis(2));
    spec.files.insert("tls.crt".into(), cert("one"));
    assert_eq!(rt.ensure_service(&spec).await.unwrap(), Ensured::Unchanged);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        first,
        "the same certificate under a new stamp is not written again"
    );

    spec.files.insert("tls.crt".into(), cert("two"));
    assert_eq!(rt.ensure_service(&spec).await.unwrap(), Ensured::Unchanged);
    let second = std::fs::read_to_string(&path).unwrap();
    assert!(second.ends_with("two\n") && second != first, "{second}");
    assert_eq!(
        pid_of(home.path(), "t5"),
        pid,
        "written in place, not restarted"
    );
    rt.remove("t5", "web", &["www".to_string()]).await.unwrap();
}

#[tokio::test]
async fn a_killed_service_is_seen_and_started_again() {
    let home = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(home.path());
    let spec = web("t2", free_port());
    rt.ensure_service(&spec).await.unwrap();
    let pid = pid_of(home.path(), "t2");
    // SAFETY: killing the service process we just started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    for _ in 0..100 {
        if rt.status("t2", "web").await.unwrap().state == ServiceState::Stopped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        rt.status("t2", "web").await.unwrap().state,
        ServiceState::Stopped
    );
    assert_eq!(rt.ensure_service(&spec).await.unwrap(), Ensured::Started);
    assert_eq!(
        rt.status("t2", "web").await.unwrap().state,
        ServiceState::Running
    );

    rt.stop("t2", "web").await.unwrap();
    assert_eq!(
        rt.status("t2", "web").await.unwrap().state,
        ServiceState::Stopped
    );
    assert!(!alive(pid_of(home.path(), "t2")));
    rt.remove("t2", "web", &[]).await.unwrap();
}

#[tokio::test]
async fn a_reused_pid_is_not_taken_for_ours() {
    let home = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(home.path());
    // A live process that is not ours, recorded with another start time (as after a reboot or
    // pid wrap-around).
    let mut stranger = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let dir = home.path().join("instances/t3/services");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("web.json"),
        serde_json::json!({
            "pid": stranger.id(),
            "start_time": 1,
            "digest": "x",
            "started_at": "2026-01-01T00:00:00Z"
        })
        .to_string(),
    )
    .unwrap();
    assert_eq!(
        rt.status("t3", "web").await.unwrap().state,
        ServiceState::Stopped
    );
    rt.stop("t3", "web").await.unwrap();
    rt.remove("t3", "web", &[]).await.unwrap();
    assert!(
        alive(stranger.id() as i32),
        "stop/remove never signal a process that is not ours"
    );
    stranger.kill().unwrap();
    let _ = stranger.wait();
}

#[tokio::test]
async fn a_service_that_dies_while_starting_fails_fast_with_its_log() {
    let home = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(home.path());
    let mut spec = web("t4", free_port());
    spec.command = vec![
        "sh".into(),
        "-c".into(),
        "echo broken config >&2; exit 3".into(),
    ];
    let started = std::time::Instant::now();
    let err = rt.ensure_service(&spec).await.unwrap_err().to_string();
    assert!(err.contains("broken config"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    rt.remove("t4", "web", &[]).await.unwrap();
}

#[tokio::test]
async fn services_outlive_the_process_that_started_them() {
    let home = tempfile::tempdir().unwrap();
    let rt = LocalRuntime::new(home.path());
    let spec = web("t5", free_port());
    rt.ensure_service(&spec).await.unwrap();
    let pid = pid_of(home.path(), "t5");
    // Its own session: a Ctrl-C to our terminal's process group does not reach it.
    // SAFETY: getsid only reads.
    let (sid, ours) = unsafe { (libc::getsid(pid), libc::getsid(0)) };
    assert_eq!(sid, pid);
    assert_ne!(sid, ours);
    rt.remove("t5", "web", &[]).await.unwrap();
}
