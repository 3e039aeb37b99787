//! Shared by the engine's integration tests: one fresh PostgreSQL cluster per test process.

use dive_pgcluster::{Cluster, StopMode};
use std::sync::OnceLock;

pub struct Db {
    /// Kept so the cluster's handle lives as long as the tests.
    pub _cluster: Cluster,
    pub url: String,
}

/// A cluster under the target tmp dir, wiped and started on first use in this process.
pub fn db(name: &str) -> &'static Db {
    static DB: OnceLock<Db> = OnceLock::new();
    DB.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-pg"));
        let cluster = Cluster::new(&root);
        let _ = cluster.stop(StopMode::Immediate);
        let _ = std::fs::remove_dir_all(&root);
        cluster.ensure_running().expect("test cluster starts");
        cluster.create_database("engine").expect("test database");
        let url = cluster.url("engine").expect("url");
        Db {
            _cluster: cluster,
            url,
        }
    })
}

/// On a new session, takes lock `key` as soon as its holder's session is gone (polling for up to
/// about a second) and records `intruder` as its holder — what another run would do.
#[allow(dead_code)]
pub async fn steal_lock(url: &str, key: &str, intruder: uuid::Uuid) -> sqlx::PgConnection {
    use sqlx::Connection;
    let mut other = sqlx::PgConnection::connect(url).await.unwrap();
    let mut got = false;
    for _ in 0..400 {
        got = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(key)
            .fetch_one(&mut other)
            .await
            .unwrap();
        if got {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(got, "lock `{key}` became free after its session was cut");
    sqlx::query("UPDATE locks SET run_id = $2 WHERE key = $1")
        .bind(key)
        .bind(intruder)
        .execute(&mut other)
        .await
        .unwrap();
    other
}

/// Gives back every advisory lock of `conn`, then closes it. Closing alone frees them only once
/// the server's backend has exited, which a test that takes the keys next would race.
#[allow(dead_code)]
pub async fn release_all(mut conn: sqlx::PgConnection) {
    use sqlx::Connection;
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
}

/// Phase type `hold`: holds for `ms` milliseconds (a phase that is running long enough to act on).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    ms: u64,
}

#[dive_engine::typetag::serde(name = "hold")]
#[dive_engine::async_trait]
impl dive_engine::Phase for Hold {
    async fn run(
        &self,
        _ctx: &dive_engine::PhaseContext,
    ) -> Result<serde_json::Value, dive_engine::PhaseError> {
        tokio::time::sleep(std::time::Duration::from_millis(self.ms)).await;
        Ok(serde_json::json!({}))
    }
}

/// A plan of `n` `hold` phases of `ms` each, one after the other, under `lock` (written as YAML:
/// a quoted key or a list).
#[allow(dead_code)]
pub fn hold_chain(lock: &str, n: usize, ms: u64) -> dive_engine::Plan {
    let mut y = format!("name: chain\nlock: {lock}\nphases:\n");
    for i in 0..n {
        let after = if i == 0 {
            String::new()
        } else {
            format!(", after: [h{}]", i - 1)
        };
        y.push_str(&format!(
            "  - {{ id: h{i}, type: hold, ms: {ms}{after} }}\n"
        ));
    }
    dive_engine::Workflow::parse("chain.yaml", &y)
        .unwrap()
        .plan(&Default::default())
        .unwrap()
}
