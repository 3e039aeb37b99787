//! `postgres.database`: ensures a database and its owner role on an instance's PostgreSQL.
//!
//! Idempotency: the role is created if missing and its password (re)set from the secret store
//! either way; the database is created if missing. The admin's own password converges too: when
//! the server refuses the store's latest version and accepts the one before it (a rotation
//! committed the new one first), the admin role gets the latest (`admin_password_set`). Compensation: drops only what this phase
//! created (its output says which), so a rollback never removes a database that was there before.
//! When the server is down (its service stopped or gone: it crashed), there is nothing to drop
//! from: the database lives in the service's data, which the service's own compensation removes
//! when this run created it; the rollback goes on instead of failing on a dead server.

use crate::context::Services;
use crate::late::Late;
use crate::service::secret_value;
use dive_engine::{
    Action, Change, Phase, PhaseContext, PhaseError, PhasePlan, SENSITIVE, async_trait, typetag,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresDatabase {
    pub instance: String,
    /// The server's port on 127.0.0.1 (e.g. `${phases.postgres.output.ports.postgres}`).
    pub port: Late<u16>,
    #[serde(default = "default_admin")]
    pub admin_user: String,
    pub admin_password_secret: String,
    pub database: String,
    pub owner: String,
    pub owner_password_secret: String,
    /// The instance's service that runs this server (for its state when it cannot be reached).
    #[serde(default = "default_service")]
    pub service: String,
}

fn default_admin() -> String {
    "postgres".into()
}

fn default_service() -> String {
    "postgres".into()
}

/// PostgreSQL refused the password (SQLSTATE 28P01).
fn is_refused_password(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("28P01"))
}

/// Connection problems are worth retrying; a refused login or bad SQL is not.
/// A protocol error here means a connection cut mid-answer (a server still starting).
fn classify(e: sqlx::Error, what: &str) -> PhaseError {
    match e {
        sqlx::Error::Protocol(_) => PhaseError::retryable(format!("{what}: {e}")),
        e => crate::db::phase_error(&e, what),
    }
}

/// A session on the server's `postgres` database as `user`.
async fn connect_as(port: u16, user: &str, password: &str) -> Result<PgConnection, sqlx::Error> {
    let opts = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(port)
        .username(user)
        .password(password)
        .database("postgres")
        .application_name("dive");
    PgConnection::connect_with(&opts).await
}

impl PostgresDatabase {
    /// Connects as the admin with the store's latest password. A secret rotation commits the
    /// new version before the server has it, so a refused password is tried once more with the
    /// version before it, and the server then gets the latest (the deploy converges it).
    async fn connect(&self, ctx: &PhaseContext) -> Result<(PgConnection, bool), PhaseError> {
        let store = Services::of(ctx)?.secrets();
        let name = &self.admin_password_secret;
        let (password, version) = store.get(name).await?.ok_or_else(|| {
            PhaseError::fatal(format!(
                "secret `{name}` does not exist (add a secret.ensure phase before this one)"
            ))
        })?;
        let what = format!(
            "connecting to PostgreSQL of {} as {}",
            self.instance, self.admin_user
        );
        let port = self.port.get("port")?;
        match self.connect_with(port, password.expose()).await {
            Err(e) if is_refused_password(&e) && version > 1 => {
                let Some(previous) = store.get_version(name, version - 1).await? else {
                    return Err(classify(e, &what));
                };
                let mut conn = self
                    .connect_with(port, previous.expose())
                    .await
                    .map_err(|e| classify(e, &what))?;
                Self::run_formatted(
                    &mut conn,
                    "SELECT format('ALTER ROLE %I WITH PASSWORD %L', $1::text, $2::text)",
                    &[&self.admin_user, password.expose()],
                    &format!("setting the password of role {}", self.admin_user),
                )
                .await?;
                tracing::info!(instance = %self.instance, role = %self.admin_user, version,
                    "database admin password set to the store's latest version");
                Ok((conn, true))
            }
            other => Ok((other.map_err(|e| classify(e, &what))?, false)),
        }
    }

    /// Whether the runtime runs the server's service (a server that is not running cannot be
    /// reached however long a retry waits).
    async fn server_running(&self, ctx: &PhaseContext) -> Result<bool, PhaseError> {
        let rt = Services::of(ctx)?.runtime();
        let status = rt
            .status(&self.instance.to_ascii_lowercase(), &self.service)
            .await?;
        Ok(status.state == dive_runtime::ServiceState::Running)
    }

    async fn connect_with(&self, port: u16, password: &str) -> Result<PgConnection, sqlx::Error> {
        connect_as(port, &self.admin_user, password).await
    }

    async fn role_exists(&self, conn: &mut PgConnection) -> Result<bool, PhaseError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(&self.owner)
            .fetch_one(conn)
            .await
            .map_err(|e| classify(e, "checking roles"))
    }

    async fn database_exists(&self, conn: &mut PgConnection) -> Result<bool, PhaseError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&self.database)
            .fetch_one(conn)
            .await
            .map_err(|e| classify(e, "checking databases"))
    }

    /// Runs a statement built server-side with format(%I/%L), so names and values are quoted by
    /// PostgreSQL itself.
    async fn run_formatted(
        conn: &mut PgConnection,
        template: &'static str,
        args: &[&str],
        what: &str,
    ) -> Result<(), PhaseError> {
        let mut q = sqlx::query_scalar::<_, String>(template);
        for a in args {
            q = q.bind(*a);
        }
        let sql = q
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| classify(e, what))?;
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .map_err(|e| classify(e, what))?;
        Ok(())
    }
}

#[typetag::serde(name = "postgres.database")]
#[async_trait]
impl Phase for PostgresDatabase {
    async fn run(&self, ctx: &PhaseContext) -> Result<Value, PhaseError> {
        let owner_password =
            secret_value(Services::of(ctx)?.secrets(), &self.owner_password_secret).await?;
        let (mut conn, admin_password_set) = self.connect(ctx).await?;
        let role_exists = self.role_exists(&mut conn).await?;
        if !role_exists {
            Self::run_formatted(
                &mut conn,
                "SELECT format('CREATE ROLE %I LOGIN', $1::text)",
                &[&self.owner],
                &format!("creating role {}", self.owner),
            )
            .await?;
        }
        Self::run_formatted(
            &mut conn,
            "SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', $1::text, $2::text)",
            &[&self.owner, &owner_password],
            &format!("setting the password of role {}", self.owner),
        )
        .await?;
        let db_exists = self.database_exists(&mut conn).await?;
        if !db_exists {
            Self::run_formatted(
                &mut conn,
                "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)",
                &[&self.database, &self.owner],
                &format!("creating database {}", self.database),
            )
            .await?;
        }
        Ok(json!({
            "database": self.database,
            "owner": self.owner,
            "created_database": !db_exists,
            "created_role": !role_exists,
            "admin_password_set": admin_password_set,
        }))
    }

    /// Reads the server as the admin (read-only): the role and the database that would be
    /// created, and the owner's password that would be set when it does not log in. A server
    /// that does not run yet (a new instance, or one the run would start first) is planned as
    /// new, or known after apply.
    async fn plan(&self, ctx: &PhaseContext) -> Result<PhasePlan, PhaseError> {
        let code = self.instance.to_ascii_uppercase();
        let role = format!("role {} (PostgreSQL)", self.owner);
        let database = format!("database {} (PostgreSQL)", self.database);
        let output = |db: bool, role: bool| {
            json!({ "database": self.database, "owner": self.owner, "created_database": db,
                    "created_role": role, "admin_password_set": false })
        };
        let store = Services::of(ctx)?.secrets();
        let admin = store.get(&self.admin_password_secret).await?;
        let (Late::Now(port), Some((admin, _))) = (&self.port, admin) else {
            // A new instance: its server and secrets are made by this run.
            return Ok(PhasePlan::changes(
                vec![
                    Change::new(Some(&code), role, Action::Create).field(
                        "password",
                        Value::Null,
                        SENSITIVE,
                    ),
                    Change::new(Some(&code), database, Action::Create).field(
                        "owner",
                        Value::Null,
                        self.owner.as_str(),
                    ),
                ],
                output(true, true),
            ));
        };
        let mut conn = match self.connect_with(*port, admin.expose()).await {
            Ok(conn) => conn,
            Err(e) => {
                return Ok(PhasePlan::changes(
                    vec![
                        Change::new(Some(&code), database, Action::KnownAfterApply)
                            .because(format!("PostgreSQL cannot be read now: {e}")),
                    ],
                    Value::Null,
                ));
            }
        };
        let role_exists = self.role_exists(&mut conn).await?;
        let db_exists = self.database_exists(&mut conn).await?;
        let mut changes = Vec::new();
        if !role_exists {
            changes.push(Change::new(Some(&code), &role, Action::Create).field(
                "password",
                Value::Null,
                SENSITIVE,
            ));
        } else {
            // The owner's password is set every run; it changes only when it does not log in.
            let owner = store.get(&self.owner_password_secret).await?;
            let logs_in = match &owner {
                Some((password, _)) => connect_as(*port, &self.owner, password.expose())
                    .await
                    .is_ok(),
                None => false,
            };
            if !logs_in {
                changes.push(
                    Change::new(Some(&code), &role, Action::Update)
                        .field("password", SENSITIVE, SENSITIVE),
                );
            }
        }
        if !db_exists {
            changes.push(Change::new(Some(&code), database, Action::Create).field(
                "owner",
                Value::Null,
                self.owner.as_str(),
            ));
        }
        Ok(PhasePlan::changes(
            changes,
            output(!db_exists, !role_exists),
        ))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, output: &Value) -> Result<(), PhaseError> {
        let created = |k: &str| output.get(k).and_then(Value::as_bool) == Some(true);
        if !created("created_database") && !created("created_role") {
            return Ok(());
        }
        let mut conn = match self.connect(ctx).await {
            Ok((conn, _)) => conn,
            Err(e) if e.is_retryable() && !self.server_running(ctx).await? => {
                ctx.note(format!(
                    "PostgreSQL of {} is not running: nothing to drop ({e})",
                    self.instance
                ));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if created("created_database") {
            Self::run_formatted(
                &mut conn,
                "SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', $1::text)",
                &[&self.database],
                &format!("dropping database {}", self.database),
            )
            .await?;
        }
        if created("created_role") {
            Self::run_formatted(
                &mut conn,
                "SELECT format('DROP ROLE IF EXISTS %I', $1::text)",
                &[&self.owner],
                &format!("dropping role {}", self.owner),
            )
            .await?;
        }
        Ok(())
    }
}
