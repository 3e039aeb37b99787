//! The embedded default: with DIVE_DATABASE_URL unset, dive starts its own PostgreSQL cluster
//! under DIVE_HOME on first use, the server outlives the dive process, and its data survives a
//! stop and a restart. A dry run leaves it as it found it: none on a fresh home, stopped when it
//! was stopped.

mod common;

use common::processes_under;
use dive_pgcluster::{Cluster, StopMode};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

fn dive(home: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    // Scratch files of the command go next to the home, where the test can see them.
    let tmp = home.with_file_name("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dive"))
        .args(args)
        .env_remove("DIVE_DATABASE_URL")
        .env("DIVE_HOME", home)
        .env("TMPDIR", &tmp)
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

    // A plan on a fresh home reads an empty scratch database and leaves nothing behind.
    let (code, stdout, stderr) = dive(&home, &["hub", "deploy", "--dry-run", "--json"]);
    assert_eq!(code, 4, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["would_change"], true);
    assert!(!home.exists(), "a dry run creates no dive home");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("tmp")).unwrap().count(),
        0,
        "the scratch cluster is removed"
    );
    assert!(processes_under(tmp.path()).is_empty());
    // Refused after the scratch database was read (no hub): still nothing left behind.
    let (code, _, stderr) = dive(&home, &["spoke", "deploy", "FRA", "--dry-run"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("hub"), "{stderr}");
    assert!(!home.exists());
    assert_eq!(
        std::fs::read_dir(tmp.path().join("tmp")).unwrap().count(),
        0
    );
    assert!(processes_under(tmp.path()).is_empty());

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

    // A plan reads the stopped cluster and stops it again.
    let (code, stdout, stderr) = dive(&home, &["run", "workflow", "demo", "--dry-run", "--json"]);
    assert!(code == 0 || code == 4, "{code}: {stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(
        plan["steps"].as_array().is_some_and(|s| !s.is_empty()),
        "{plan:#}"
    );
    assert!(
        !cluster.0.is_running(),
        "the dry run left the cluster running"
    );

    // Next use starts it again, on the same port, with the run still there.
    let (code, stdout, stderr) = dive(&home, &["runs", "list", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let runs: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(runs[0]["id"], run["id"]);
    assert_eq!(runs[0]["state"], "succeeded");
    assert_eq!(cluster.0.port().unwrap(), port);
}
