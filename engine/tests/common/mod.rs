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
