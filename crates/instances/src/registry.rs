//! The instance registry: table `instances` in the state database, and port blocks.

use chrono::{DateTime, Utc};
use dive_runtime::RuntimeKind;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgRow;
use sqlx::types::Uuid;
use sqlx::{PgPool, Row};
use std::fmt;

/// Ports in one instance's block.
pub const BLOCK_SIZE: u16 = 10;
/// First port of block 0 unless `DIVE_PORT_BASE` says otherwise.
pub const DEFAULT_PORT_BASE: u16 = 20000;
/// The environment variable that moves every block.
pub const PORT_BASE_ENV: &str = "DIVE_PORT_BASE";
/// Lowest accepted base: below it ports need privileges.
const MIN_PORT_BASE: u16 = 1024;
/// Why a spoke cannot be registered before any hub (also `dive spoke deploy`'s message).
pub const NO_HUB: &str = "no hub is deployed: run `dive hub deploy` first";
/// How often a registration is tried again after losing a race on a unique key.
const REGISTER_ATTEMPTS: usize = 5;

/// What an instance is in the coalition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Hub,
    Spoke,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Hub => "hub",
            Role::Spoke => "spoke",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hub" => Ok(Role::Hub),
            "spoke" => Ok(Role::Spoke),
            other => Err(format!("unknown role `{other}` (expected hub or spoke)")),
        }
    }
}

/// The ports of one instance, all on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ports {
    pub postgres: u16,
    /// Keycloak HTTP.
    pub keycloak: u16,
    /// Keycloak management interface (health and metrics).
    pub management: u16,
}

impl Ports {
    pub fn all(&self) -> [u16; 3] {
        [self.postgres, self.keycloak, self.management]
    }
}

/// One registered instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    /// Upper case (`FRA`).
    pub code: String,
    pub role: Role,
    pub runtime: RuntimeKind,
    pub port_block: u32,
    /// The run whose `instance.register` phase created the registration, if any.
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    port_base: u16,
}

impl InstanceRecord {
    /// Lower case, as the code appears inside names (`fra`).
    pub fn code_lower(&self) -> String {
        self.code.to_ascii_lowercase()
    }

    pub fn ports(&self) -> Ports {
        let first = u32::from(self.port_base) + u32::from(BLOCK_SIZE) * self.port_block;
        // The registry only hands out blocks that end at or below 65535.
        let port = |offset: u32| u16::try_from(first + offset).expect("block within 1..=65535");
        Ports {
            postgres: port(0),
            keycloak: port(1),
            management: port(2),
        }
    }

    /// The instance's realm, `dive-<code lower>`.
    pub fn realm(&self) -> String {
        format!("dive-{}", self.code_lower())
    }

    /// Keycloak's base URL on the host (HTTPS only, with a certificate of the dive CA).
    pub fn keycloak_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports().keycloak)
    }

    /// The country's English short name.
    pub fn country(&self) -> &'static str {
        crate::country_name(&self.code).unwrap_or("unknown")
    }

    fn from_row(row: &PgRow, port_base: u16) -> Result<Self, InstanceError> {
        let code: String = row.try_get("code")?;
        let corrupt = |what: String| InstanceError::Corrupt {
            code: code.clone(),
            what,
        };
        let role: String = row.try_get("role")?;
        let runtime: String = row.try_get("runtime")?;
        let block: i32 = row.try_get("port_block")?;
        Ok(InstanceRecord {
            role: role.parse().map_err(corrupt)?,
            runtime: runtime.parse().map_err(corrupt)?,
            port_block: u32::try_from(block)
                .map_err(|_| corrupt(format!("negative port block {block}")))?,
            created_by: row.try_get("created_by")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            port_base,
            code,
        })
    }
}

impl Serialize for InstanceRecord {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct View<'a> {
            code: &'a str,
            country: &'a str,
            role: Role,
            runtime: RuntimeKind,
            realm: String,
            keycloak_url: String,
            port_block: u32,
            ports: Ports,
            created_at: DateTime<Utc>,
            updated_at: DateTime<Utc>,
        }
        View {
            code: &self.code,
            country: self.country(),
            role: self.role,
            runtime: self.runtime,
            realm: self.realm(),
            keycloak_url: self.keycloak_url(),
            port_block: self.port_block,
            ports: self.ports(),
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
        .serialize(s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("{0}")]
    InvalidCode(String),
    #[error("instance {code} is registered as a {registered}, not as a {requested}")]
    RoleConflict {
        code: String,
        registered: Role,
        requested: Role,
    },
    #[error(
        "instance {code} is registered on the {registered} runtime, not on the {requested} runtime"
    )]
    RuntimeConflict {
        code: String,
        registered: RuntimeKind,
        requested: RuntimeKind,
    },
    #[error(
        "hub {existing} is already registered and there is at most one hub \
         (cannot register {requested} as a hub)"
    )]
    HubExists { existing: String, requested: String },
    #[error(
        "no free port block: all {blocks} blocks of {BLOCK_SIZE} ports from port {base} are in use"
    )]
    PortsExhausted { base: u16, blocks: u32 },
    #[error("{PORT_BASE_ENV} `{value}`: {why}")]
    PortBase { value: String, why: String },
    #[error("registered instance {code} is unreadable: {what}")]
    Corrupt { code: String, what: String },
    #[error("instance registry database: {0}")]
    Database(#[from] sqlx::Error),
}

impl InstanceError {
    /// Whether the operator can fix it (a code, a role, a runtime, the port base).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            InstanceError::InvalidCode(_)
                | InstanceError::RoleConflict { .. }
                | InstanceError::RuntimeConflict { .. }
                | InstanceError::HubExists { .. }
                | InstanceError::PortBase { .. }
        )
    }

    fn is_unique_violation(&self) -> bool {
        matches!(self, InstanceError::Database(sqlx::Error::Database(db))
            if db.code().as_deref() == Some("23505"))
    }
}

impl dive_error::Classify for InstanceError {
    /// Whether trying again later can help (connection trouble, serialisation failures).
    fn is_retryable(&self) -> bool {
        match self {
            InstanceError::Database(e) => dive_error::is_transient_sqlx(e),
            _ => false,
        }
    }

    /// The registry lives in the state database.
    fn is_state_db_unavailable(&self) -> bool {
        matches!(self, InstanceError::Database(e) if dive_error::is_db_unavailable(e))
    }
}

fn code_of(code: &str) -> Result<String, InstanceError> {
    crate::normalize_code(code).map_err(InstanceError::InvalidCode)
}

fn check_base(base: u16) -> Result<u16, String> {
    if base < MIN_PORT_BASE {
        return Err(format!("must be at least {MIN_PORT_BASE}"));
    }
    if u32::from(base) + u32::from(BLOCK_SIZE) - 1 > u32::from(u16::MAX) {
        return Err(format!(
            "leaves no room for a block of {BLOCK_SIZE} ports below 65536"
        ));
    }
    Ok(base)
}

/// The lock key that runs on an instance hold (`instance:FRA`): deploys, federation runs and the
/// `instance-down` / `instance-reset` workflows. The engine takes it; the registry never does.
pub fn lock_key(code: &str) -> String {
    format!("instance:{code}")
}

/// The registry over the state database's pool.
#[derive(Debug, Clone)]
pub struct Instances {
    pool: PgPool,
    /// The first port of block 0.
    base: u16,
}

/// The columns every query returns (a macro, so queries stay `&'static str` for sqlx).
macro_rules! columns {
    () => {
        "code, role, runtime, port_block, created_by, created_at, updated_at"
    };
}

impl Instances {
    /// The registry with the default port base ([`DEFAULT_PORT_BASE`]).
    pub fn new(pool: PgPool) -> Instances {
        Instances {
            pool,
            base: DEFAULT_PORT_BASE,
        }
    }

    /// The registry with an explicit port base.
    pub fn with_port_base(pool: PgPool, base: u16) -> Result<Instances, InstanceError> {
        let base = check_base(base).map_err(|why| InstanceError::PortBase {
            value: base.to_string(),
            why,
        })?;
        Ok(Instances { pool, base })
    }

    /// A port base as an operator writes it (`DIVE_PORT_BASE`), checked as
    /// [`Instances::with_port_base`] checks it.
    pub fn parse_port_base(text: &str) -> Result<u16, InstanceError> {
        text.trim()
            .parse::<u16>()
            .map_err(|_| "not a port number".to_string())
            .and_then(check_base)
            .map_err(|why| InstanceError::PortBase {
                value: text.to_string(),
                why,
            })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn port_base(&self) -> u16 {
        self.base
    }

    /// How many blocks fit between the base and port 65535.
    pub fn block_count(&self) -> Result<u32, InstanceError> {
        let base = self.port_base();
        Ok((u32::from(u16::MAX) + 1 - u32::from(base)) / u32::from(BLOCK_SIZE))
    }

    /// Registers `code` (any case) with `role` on `runtime`, or finds it registered just so.
    /// Returns the record and whether this call created it. The same code with another role or
    /// runtime, or a second hub, is an error.
    pub async fn register(
        &self,
        code: &str,
        role: Role,
        runtime: RuntimeKind,
    ) -> Result<(InstanceRecord, bool), InstanceError> {
        self.register_inner(code, role, runtime, None).await
    }

    /// Like [`Instances::register`], on behalf of run `run`: `created` is also true when `run`
    /// created the registration earlier (the phase ran again after a crash).
    pub async fn register_for_run(
        &self,
        code: &str,
        role: Role,
        runtime: RuntimeKind,
        run: Uuid,
    ) -> Result<(InstanceRecord, bool), InstanceError> {
        self.register_inner(code, role, runtime, Some(run)).await
    }

    async fn register_inner(
        &self,
        code: &str,
        role: Role,
        runtime: RuntimeKind,
        run: Option<Uuid>,
    ) -> Result<(InstanceRecord, bool), InstanceError> {
        let code = code_of(code)?;
        let base = self.port_base();
        let blocks = self.block_count()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .try_register(&code, role, runtime, run, base, blocks)
                .await
            {
                Err(e) if e.is_unique_violation() && attempt < REGISTER_ATTEMPTS => continue,
                other => return other,
            }
        }
    }

    async fn try_register(
        &self,
        code: &str,
        role: Role,
        runtime: RuntimeKind,
        run: Option<Uuid>,
        base: u16,
        blocks: u32,
    ) -> Result<(InstanceRecord, bool), InstanceError> {
        let mut tx = self.pool.begin().await?;
        // Registrations take turns (reads do not wait): the lowest free block is then really
        // free when it is inserted. The unique key on port_block stays the last word.
        sqlx::query("LOCK TABLE instances IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let existing = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM instances WHERE code = $1"
        ))
        .bind(code)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| InstanceRecord::from_row(&r, base))
        .transpose()?;
        if let Some(rec) = existing {
            check_same(&rec, role, runtime)?;
            let row = sqlx::query(concat!(
                "UPDATE instances SET updated_at = now() WHERE code = $1 RETURNING ",
                columns!()
            ))
            .bind(code)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            let rec = InstanceRecord::from_row(&row, base)?;
            let created = run.is_some() && rec.created_by == run;
            return Ok((rec, created));
        }
        if role == Role::Hub
            && let Some(hub) =
                sqlx::query_scalar::<_, String>("SELECT code FROM instances WHERE role = 'hub'")
                    .fetch_optional(&mut *tx)
                    .await?
        {
            return Err(InstanceError::HubExists {
                existing: hub,
                requested: code.to_string(),
            });
        }
        let block: Option<i32> = sqlx::query_scalar(
            "SELECT b FROM generate_series(0, $1 - 1) AS b \
             WHERE NOT EXISTS (SELECT 1 FROM instances WHERE port_block = b) \
             ORDER BY b LIMIT 1",
        )
        .bind(i32::try_from(blocks).unwrap_or(i32::MAX))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(block) = block else {
            return Err(InstanceError::PortsExhausted { base, blocks });
        };
        let row = sqlx::query(concat!(
            "INSERT INTO instances (code, role, runtime, port_block, created_by) \
             VALUES ($1, $2, $3, $4, $5) RETURNING ",
            columns!()
        ))
        .bind(code)
        .bind(role.as_str())
        .bind(runtime.to_string())
        .bind(block)
        .bind(run)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let rec = InstanceRecord::from_row(&row, base)?;
        tracing::info!(
            instance = %rec.code,
            role = %rec.role,
            block = rec.port_block,
            "registered instance"
        );
        Ok((rec, true))
    }

    /// The instance `code` (any case), if registered.
    pub async fn get(&self, code: &str) -> Result<Option<InstanceRecord>, InstanceError> {
        let code = code_of(code)?;
        let base = self.port_base();
        sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM instances WHERE code = $1"
        ))
        .bind(&code)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| InstanceRecord::from_row(&r, base))
        .transpose()
    }

    /// The hub, if one is registered.
    pub async fn hub(&self) -> Result<Option<InstanceRecord>, InstanceError> {
        let base = self.port_base();
        sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM instances WHERE role = 'hub'"
        ))
        .fetch_optional(&self.pool)
        .await?
        .map(|r| InstanceRecord::from_row(&r, base))
        .transpose()
    }

    /// Every instance: the hub first, then spokes by code.
    pub async fn list(&self) -> Result<Vec<InstanceRecord>, InstanceError> {
        let base = self.port_base();
        sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM instances ORDER BY role = 'spoke', code"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| InstanceRecord::from_row(r, base))
        .collect()
    }

    /// Unregisters `code` (any case), freeing its port block; returns what was removed.
    pub async fn remove(&self, code: &str) -> Result<Option<InstanceRecord>, InstanceError> {
        let code = code_of(code)?;
        let base = self.port_base();
        let removed = sqlx::query(concat!(
            "DELETE FROM instances WHERE code = $1 RETURNING ",
            columns!()
        ))
        .bind(&code)
        .fetch_optional(&self.pool)
        .await?
        .map(|r| InstanceRecord::from_row(&r, base))
        .transpose()?;
        if let Some(rec) = &removed {
            tracing::info!(instance = %rec.code, block = rec.port_block, "unregistered instance");
        }
        Ok(removed)
    }

    /// Unregisters `code` only if run `run` created the registration; whether it did.
    pub async fn remove_if_created_by(&self, code: &str, run: Uuid) -> Result<bool, InstanceError> {
        let code = code_of(code)?;
        let n = sqlx::query("DELETE FROM instances WHERE code = $1 AND created_by = $2")
            .bind(&code)
            .bind(run)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n > 0 {
            tracing::info!(instance = %code, run = %run, "unregistered instance (compensation)");
        }
        Ok(n > 0)
    }
}

fn check_same(rec: &InstanceRecord, role: Role, runtime: RuntimeKind) -> Result<(), InstanceError> {
    if rec.role != role {
        return Err(InstanceError::RoleConflict {
            code: rec.code.clone(),
            registered: rec.role,
            requested: role,
        });
    }
    if rec.runtime != runtime {
        return Err(InstanceError::RuntimeConflict {
            code: rec.code.clone(),
            registered: rec.runtime,
            requested: runtime,
        });
    }
    Ok(())
}
