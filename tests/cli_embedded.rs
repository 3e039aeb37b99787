//! The embedded default: with DIVE_DATABASE_URL unset, dive starts its own PostgreSQL cluster
//! under DIVE_HOME on first use, the server outlives the dive process, and its data survives a
//! stop and a restart.

use dive_pgcluster::{Cluster, StopMode};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

fn dive(home: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dive"))
        .args(args)
        .env_remove("DIVE_DATABASE_URL")
        .env("DIVE_HOME", home)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("dive runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Stops the embedded cluster even when the test fails.
struct StopOnDrop(Cluster);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.stop(StopMode::Immediate);
    }
}

#[test]
fn the_embedded_cluster_starts_on_first_use_and_keeps_its_data() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = tmp.path().join("home");
    let cluster = StopOnDrop(Cluster::new(home.join("postgres")));

    let (code, stdout, stderr) = dive(&home, &["run", "workflow", "demo", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let run: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        cluster.0.is_running(),
        "the server outlives the dive process that started it"
    );
    let port = cluster.0.port().unwrap();

    let (code, stdout, _) = dive(&home, &["db", "status", "--json"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["embedded"], true);
    assert!(status["url"].as_str().unwrap().contains(&port.to_string()));

    let (code, _, stderr) = dive(&home, &["db", "stop"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(!cluster.0.is_running());

    // Next use starts it again, on the same port, with the run still there.
    let (code, stdout, stderr) = dive(&home, &["runs", "list", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let runs: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(runs[0]["id"], run["id"]);
    assert_eq!(runs[0]["state"], "succeeded");
    assert_eq!(cluster.0.port().unwrap(), port);
}
