//! The two services dive runs itself, PostgreSQL and Keycloak: what is the same on every
//! runtime (ports, data, environment, health). Each runtime then fills in the rest through
//! [`Runtime::builtin`].

use crate::{
    Builtin, DataMount, Health, PortSpec, Runtime, RuntimeError, ServiceFile, ServiceSpec,
};
use std::time::Duration;

/// Image of PostgreSQL on Docker (built by `scripts/images build`).
pub const POSTGRES_IMAGE: &str = "dive-offline/postgres:15";
/// PostgreSQL's port inside its container.
const POSTGRES_CONTAINER_PORT: u16 = 5432;
/// Keycloak's HTTPS port inside its container.
pub const KEYCLOAK_HTTPS_PORT: u16 = 8443;
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

/// What a Keycloak serves HTTPS with: its certificate and key, and the CA its outgoing calls
/// (the broker back-channel to a partner) trust.
pub struct KeycloakTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// Makes `spec` a Keycloak server for the instance's PostgreSQL (database `keycloak`, role
/// `keycloak`, host port `db_port`), HTTPS only on host ports `https` and `management`, with
/// bootstrap admin `admin`. Passwords and the key reach it in files only (its config file,
/// `KC_CONFIG_FILE`). Health is the management port's `/health/ready` over HTTPS; callers check
/// the admin API after it.
pub async fn keycloak_template(
    rt: &dyn Runtime,
    spec: &mut ServiceSpec,
    (https, management): (u16, u16),
    db_port: u16,
    (admin_password, db_password): (String, String),
    tls: KeycloakTls,
) -> Result<(), RuntimeError> {
    spec.ports = vec![
        PortSpec {
            name: "https".into(),
            container: KEYCLOAK_HTTPS_PORT,
            host: https,
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
    let env = [
        ("KC_CONFIG_FILE", "{file:keycloak.conf}".to_string()),
        (
            "KC_DB_URL",
            format!("jdbc:postgresql://{db_host}:{db_port}/keycloak"),
        ),
        ("KC_DB_USERNAME", "keycloak".into()),
        ("KC_BOOTSTRAP_ADMIN_USERNAME", "admin".into()),
        // Tokens and front-channel URLs name the address a browser on this machine uses;
        // calls that reach Keycloak another way (a partner over `dive-federation`) get
        // back-channel URLs for the address they used.
        ("KC_HOSTNAME", format!("https://127.0.0.1:{https}")),
        ("KC_HOSTNAME_BACKCHANNEL_DYNAMIC", "true".into()),
        ("KC_HTTP_ENABLED", "false".into()),
        ("KC_HTTPS_PORT", "{port:https}".into()),
        ("KC_HTTPS_CERTIFICATE_FILE", "{file:tls.crt}".into()),
        ("KC_HTTPS_CERTIFICATE_KEY_FILE", "{file:tls.key}".into()),
        ("KC_TRUSTSTORE_PATHS", "{file:ca.pem}".into()),
        // The shortest period Keycloak accepts.
        ("KC_HTTPS_CERTIFICATES_RELOAD_PERIOD", "30s".into()),
        ("JAVA_OPTS_KC_HEAP", "-Xms64m -Xmx768m".into()),
    ];
    spec.env.extend(env.map(|(k, v)| (k.to_string(), v)));
    spec.files.extend([
        (
            "keycloak.conf".to_string(),
            ServiceFile {
                content: format!("db-password={db_password}\n"),
                // Keycloak creates its first admin with it, once; later changes go through the
                // admin API.
                bootstrap: format!("bootstrap-admin-password={admin_password}\n"),
                live: false,
            },
        ),
        // Renewed in place: Keycloak rereads them (KC_HTTPS_CERTIFICATES_RELOAD_PERIOD), so a
        // new certificate needs no restart and costs no login.
        (
            "tls.crt".to_string(),
            ServiceFile::live_stamped(&tls.cert_pem),
        ),
        ("tls.key".to_string(), ServiceFile::live(tls.key_pem)),
        ("ca.pem".to_string(), ServiceFile::new(tls.ca_pem)),
    ]);
    spec.health = Some(Health::Http {
        port: "management".into(),
        path: "/health/ready".into(),
        tls: true,
    });
    if spec.ready_timeout < Duration::from_secs(300) {
        spec.ready_timeout = Duration::from_secs(300);
    }
    rt.builtin(spec, Builtin::Keycloak).await
}
