//! `postgres.database`: ensures a database and its owner role on an instance's PostgreSQL.
//!
//! Idempotency: the role is created if missing and its password (re)set from the secret store
//! either way; the database is created if missing. Compensation: drops only what this phase
//! created (its output says which), so a rollback never removes a database that was there before.

use crate::context::Services;
use crate::late::Late;
use crate::service::secret_value;
use dive_engine::{Phase, PhaseContext, PhaseError, async_trait, typetag};
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
}

fn default_admin() -> String {
    "postgres".into()
}

/// Connection problems are worth retrying; a refused login or bad SQL is not.
/// A protocol error here means a connection cut mid-answer (a server still starting).
fn classify(e: sqlx::Error, what: &str) -> PhaseError {
    match e {
        sqlx::Error::Protocol(_) => PhaseError::retryable(format!("{what}: {e}")),
        e => crate::db::phase_error(&e, what),
    }
}

impl PostgresDatabase {
    async fn connect(&self, ctx: &PhaseContext) -> Result<PgConnection, PhaseError> {
        let store = Services::of(ctx)?.secrets();
        let password = secret_value(store, &self.admin_password_secret).await?;
        let opts = PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.port.get("port")?)
            .username(&self.admin_user)
            .password(&password)
            .database("postgres")
            .application_name("dive");
        PgConnection::connect_with(&opts).await.map_err(|e| {
            classify(
                e,
                &format!(
                    "connecting to PostgreSQL of {} as {}",
                    self.instance, self.admin_user
                ),
            )
        })
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
        let mut conn = self.connect(ctx).await?;
        let role_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(&self.owner)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| classify(e, "checking roles"))?;
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
        let db_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&self.database)
                .fetch_one(&mut conn)
                .await
                .map_err(|e| classify(e, "checking databases"))?;
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
        }))
    }

    fn has_compensation(&self) -> bool {
        true
    }

    async fn compensate(&self, ctx: &PhaseContext, output: &Value) -> Result<(), PhaseError> {
        let created = |k: &str| output.get(k).and_then(Value::as_bool) == Some(true);
        if !created("created_database") && !created("created_role") {
            return Ok(());
        }
        let mut conn = self.connect(ctx).await?;
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
