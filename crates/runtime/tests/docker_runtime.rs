//! The Docker runtime against the real engine and the locally built offline images
//! (`scripts/images build`): ensure is idempotent, a changed spec recreates, stop/start/remove,
//! a missing image is a clear error, and deploys racing for a network create one.

use dive_error::Classify;
use dive_runtime::docker::{DockerRuntime, container_name};
use dive_runtime::{Ensured, Health, PortSpec, Runtime, ServiceFile, ServiceSpec, ServiceState};
use std::collections::BTreeMap;
use std::time::Duration;

const BASE: &str = "dive-offline/base:bookworm";

fn code() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("d{}", &id[id.len() - 6..])
}

fn sleeper(instance: &str) -> ServiceSpec {
    ServiceSpec {
        instance: instance.into(),
        name: "sleeper".into(),
        image: BASE.into(),
        // Exits on SIGTERM (PID 1 gets no default handler), so stop is quick.
        command: vec![
            "sh".into(),
            "-c".into(),
            "trap 'exit 0' TERM; while :; do sleep 1; done".into(),
        ],
        env: BTreeMap::from([("MODE".to_string(), "a".to_string())]),
        files: BTreeMap::new(),
        ports: vec![],
        data: vec![],
        health: Some(Health::Command {
            command: vec!["true".into()],
        }),
        ready_timeout: Duration::from_secs(30),
        run_as: None,
        init: None,
        networks: vec![],
    }
}

/// `docker <args>`, run to its end.
async fn docker(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .unwrap()
}

async fn id_of(name: &str) -> String {
    let out = docker(&["inspect", "-f", "{{.Id}}", name]).await;
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn ensure_is_idempotent_and_follows_spec_changes() {
    let rt = DockerRuntime::connect()
        .await
        .expect("a running Docker engine");
    let code = code();
    let spec = sleeper(&code);
    let name = container_name(&code, "sleeper");
    assert_eq!(rt.ensure_service(&spec).await.unwrap(), Ensured::Created);
    let first = id_of(&name).await;
    assert_eq!(rt.ensure_service(&spec).await.unwrap(), Ensured::Unchanged);
    assert_eq!(id_of(&name).await, first, "identical container left alone");

    let mut changed = spec.clone();
    changed.env.insert("MODE".into(), "b".into());
    assert_eq!(
        rt.ensure_service(&changed).await.unwrap(),
        Ensured::Recreated
    );
    assert_ne!(id_of(&name).await, first);

    rt.stop(&code, "sleeper").await.unwrap();
    assert_eq!(
        rt.status(&code, "sleeper").await.unwrap().state,
        ServiceState::Stopped
    );
    assert_eq!(rt.ensure_service(&changed).await.unwrap(), Ensured::Started);
    assert_eq!(
        rt.status(&code, "sleeper").await.unwrap().state,
        ServiceState::Running
    );

    rt.remove(&code, "sleeper", &[]).await.unwrap();
    assert_eq!(
        rt.status(&code, "sleeper").await.unwrap().state,
        ServiceState::Missing
    );
    // The instance's network is listed as its own, and goes.
    let owned = rt.owned_by(&code).await.unwrap();
    let network = owned
        .iter()
        .find(|r| r.kind == dive_runtime::ResourceKind::Network)
        .expect("the instance network is owned by the instance");
    assert_eq!(network.name, format!("dive-{code}"));
    rt.remove_resource(network).await.unwrap();
}

async fn file_in(container: &str, path: &str) -> String {
    let out = docker(&["exec", container, "cat", path]).await;
    assert!(out.status.success(), "docker exec {container} cat {path}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A live file is uploaded into the running container only when its content changed: a new
/// stamp alone (every deploy makes one) is no reason, since each rewrite makes Keycloak take the
/// certificate up again and drop the TLS handshakes under way.
#[tokio::test]
async fn a_live_file_is_uploaded_only_when_its_content_changes() {
    let rt = DockerRuntime::connect()
        .await
        .expect("a running Docker engine");
    let code = code();
    let mut spec = sleeper(&code);
    let name = container_name(&code, "sleeper");
    let path = format!("{}/tls.crt", dive_runtime::docker::FILES_DIR);
    let cert = |body: &str| ServiceFile::live_stamped(&format!("-----BEGIN X-----\n{body}\n"));
    spec.files.insert("tls.crt".into(), cert("one"));
    assert_eq!(rt.ensure_service(&spec).await.unwrap(), Ensured::Created);
    let first = file_in(&name, &path).await;
    assert!(first.ends_with("one\n"), "{first}");

    tokio::time::sleep(Duration::from_millis(2)).await;
    spec.files.insert("tls.crt".into(), cert("one"));
    assert_eq!(rt.ensure_service(&spec).await.unwrap(), Ensured::Unchanged);
    assert_eq!(
        file_in(&name, &path).await,
        first,
        "the same certificate under a new stamp is not uploaded again"
    );

    spec.files.insert("tls.crt".into(), cert("two"));
    assert_eq!(rt.ensure_service(&spec).await.unwrap(), Ensured::Unchanged);
    let second = file_in(&name, &path).await;
    assert!(second.ends_with("two\n") && second != first, "{second}");
    rt.remove(&code, "sleeper", &[]).await.unwrap();
    for r in rt.owned_by(&code).await.unwrap() {
        rt.remove_resource(&r).await.unwrap();
    }
}

#[tokio::test]
async fn a_missing_image_is_a_clear_error() {
    let rt = DockerRuntime::connect()
        .await
        .expect("a running Docker engine");
    let code = code();
    let mut spec = sleeper(&code);
    spec.image = "dive-offline/does-not-exist:1".into();
    spec.ports = vec![PortSpec {
        name: "x".into(),
        container: 1,
        host: 1,
    }];
    let err = rt.ensure_service(&spec).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("dive-offline/does-not-exist:1"), "{text}");
    assert!(text.contains("scripts/images build"), "{text}");
    assert!(
        !err.is_retryable(),
        "a missing image is not fixed by retrying"
    );
    assert_eq!(
        rt.status(&code, "sleeper").await.unwrap().state,
        ServiceState::Missing
    );
}

/// IDs of the Docker networks named exactly `name`.
async fn networks_named(name: &str) -> Vec<String> {
    let filter = format!("name=^{name}$");
    let out = docker(&[
        "network",
        "ls",
        "--quiet",
        "--no-trunc",
        "--filter",
        &filter,
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn deploys_racing_for_a_network_create_one() {
    // Engines before API 1.44 (20.10 here) create a second network of the same name when two
    // creates race, as two instances deployed side by side both ensuring `dive-federation` do.
    let name = format!("dive-{}", code());
    let mut racers = Vec::new();
    for _ in 0..6 {
        let rt = DockerRuntime::connect()
            .await
            .expect("a running Docker engine");
        let name = name.clone();
        racers.push(tokio::spawn(async move { rt.ensure_network(&name).await }));
    }
    let results: Vec<_> = futures::future::join_all(racers).await;
    let ids = networks_named(&name).await;
    for id in &ids {
        let _ = tokio::process::Command::new("docker")
            .args(["network", "rm", id])
            .output()
            .await;
    }
    for r in results {
        r.unwrap().unwrap();
    }
    assert_eq!(ids.len(), 1, "one network named {name}: {ids:?}");
}

#[tokio::test]
async fn two_networks_of_one_name_are_a_clear_error() {
    // What an older dive (or a hand) could leave behind; containers on one cannot reach the
    // other's, so guessing one is worse than saying so.
    let name = format!("dive-{}", code());
    let docker = bollard::Docker::connect_with_local_defaults()
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    for _ in 0..2 {
        docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let rt = DockerRuntime::connect().await.unwrap();
    let result = rt.ensure_network(&name).await;
    for id in networks_named(&name).await {
        docker.remove_network(&id).await.unwrap();
    }
    let err = result.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&name) && text.contains("docker network rm"),
        "{text}"
    );
    assert!(!err.is_retryable(), "{text}");
}
