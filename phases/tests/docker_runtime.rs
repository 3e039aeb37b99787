//! The Docker runtime against the real engine and the locally built offline images
//! (`scripts/images build`): ensure is idempotent, a changed spec recreates, stop/start/remove,
//! and a missing image is a clear error.

use dive_phases::runtime::docker::{DockerRuntime, container_name};
use dive_phases::runtime::{Ensured, Health, PortSpec, Runtime, ServiceSpec, ServiceState};
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
        secret_env: BTreeMap::new(),
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

async fn id_of(name: &str) -> String {
    let out = tokio::process::Command::new("docker")
        .args(["inspect", "-f", "{{.Id}}", name])
        .output()
        .await
        .unwrap();
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
    rt.remove_resource(&dive_phases::runtime::Resource {
        kind: "network".into(),
        name: format!("dive-{code}"),
    })
    .await
    .unwrap();
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
