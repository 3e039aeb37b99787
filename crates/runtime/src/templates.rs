//! The two services dive runs itself, PostgreSQL and Keycloak: what is the same on every
//! runtime (ports, data, environment, health). Each runtime then fills in the rest through
//! [`Runtime::builtin`].

use crate::{Builtin, DataMount, Health, PortSpec, Runtime, RuntimeError, ServiceSpec};
use std::time::Duration;

/// Image of PostgreSQL on Docker (built by `scripts/images build`).
pub const POSTGRES_IMAGE: &str = "dive-offline/postgres:15";
/// PostgreSQL's port inside its container.
const POSTGRES_CONTAINER_PORT: u16 = 5432;
/// Keycloak's HTTP port inside its container.
pub const KEYCLOAK_HTTP_PORT: u16 = 8080;
/// Keycloak's management (health) port inside its container.
const KEYCLOAK_MANAGEMENT_PORT: u16 = 9000;

/// PostgreSQL's readiness: `pg_isready` (the `program` path) against 127.0.0.1:`port`, as the
/// server's own host sees it.
pub(crate) fn pg_isready(program: String, port: String) -> Health {
    Health::Command {
        command: vec![
            program,
            "-q".into(),
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port,
            "-U".into(),
            "postgres".into(),
        ],
    }
}

/// The port of an instance's PostgreSQL listening on `host` on this machine.
fn postgres_port(host: u16) -> PortSpec {
    PortSpec {
        name: "postgres".into(),
        container: POSTGRES_CONTAINER_PORT,
        host,
    }
}

/// Makes `spec` a PostgreSQL 15 server on host port `port` with its own data volume, the
/// superuser's password set on first start.
pub async fn postgres_template(
    rt: &dyn Runtime,
    spec: &mut ServiceSpec,
    port: u16,
    password: String,
) -> Result<(), RuntimeError> {
    spec.ports = vec![postgres_port(port)];
    spec.data = vec![DataMount {
        volume: "pgdata".into(),
        target: "/var/lib/postgresql/data".into(),
    }];
    rt.builtin(spec, Builtin::Postgres { password }).await
}

/// Makes `spec` a Keycloak server for the instance's PostgreSQL (database `keycloak`, role
/// `keycloak`, host port `db_port`), on host ports `http` and `management`, with bootstrap
/// admin `admin`. Health is the management port's `/health/ready`; callers check the admin API
/// after it.
pub async fn keycloak_template(
    rt: &dyn Runtime,
    spec: &mut ServiceSpec,
    (http, management): (u16, u16),
    db_port: u16,
    admin_password: String,
    db_password: String,
) -> Result<(), RuntimeError> {
    spec.ports = vec![
        PortSpec {
            name: "http".into(),
            container: KEYCLOAK_HTTP_PORT,
            host: http,
        },
        PortSpec {
            name: "management".into(),
            container: KEYCLOAK_MANAGEMENT_PORT,
            host: management,
        },
    ];
    let (db_host, db_port) =
        rt.kind()
            .sibling_addr(&spec.instance, "postgres", &postgres_port(db_port));
    spec.env.extend([
        (
            "KC_DB_URL".to_string(),
            format!("jdbc:postgresql://{db_host}:{db_port}/keycloak"),
        ),
        ("KC_DB_USERNAME".to_string(), "keycloak".to_string()),
        (
            "KC_BOOTSTRAP_ADMIN_USERNAME".to_string(),
            "admin".to_string(),
        ),
        // Tokens and front-channel URLs name the address a browser on this machine uses;
        // calls that reach Keycloak another way (a partner over `dive-federation`) get
        // back-channel URLs for the address they used.
        (
            "KC_HOSTNAME".to_string(),
            format!("http://127.0.0.1:{http}"),
        ),
        (
            "KC_HOSTNAME_BACKCHANNEL_DYNAMIC".to_string(),
            "true".to_string(),
        ),
        ("KC_HTTP_ENABLED".to_string(), "true".to_string()),
        (
            "JAVA_OPTS_KC_HEAP".to_string(),
            "-Xms64m -Xmx768m".to_string(),
        ),
    ]);
    spec.secret_env.insert("KC_DB_PASSWORD".into(), db_password);
    // Keycloak creates its first admin with it, once; later changes go through the admin API.
    spec.bootstrap_secret_env
        .insert("KC_BOOTSTRAP_ADMIN_PASSWORD".into(), admin_password);
    spec.health = Some(Health::Http {
        port: "management".into(),
        path: "/health/ready".into(),
    });
    if spec.ready_timeout < Duration::from_secs(300) {
        spec.ready_timeout = Duration::from_secs(300);
    }
    rt.builtin(spec, Builtin::Keycloak).await
}
