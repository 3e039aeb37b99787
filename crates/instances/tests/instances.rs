//! The instance registry against a real PostgreSQL: port blocks for every ISO code without a
//! collision, concurrent registrations, idempotency and conflicts, freed blocks, and the instance
//! lock.

use dive_instances::{COUNTRIES, InstanceError, Instances, Role};
use dive_pgcluster::{Cluster, StopMode};
use dive_runtime::RuntimeKind;
use sqlx::PgPool;
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

/// A cluster under the target tmp dir, wiped and started on first use in this process.
fn cluster() -> &'static Cluster {
    static DB: OnceLock<Cluster> = OnceLock::new();
    DB.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("instances-pg");
        let cluster = Cluster::new(&root);
        let _ = cluster.stop(StopMode::Immediate);
        let _ = std::fs::remove_dir_all(&root);
        cluster.ensure_running().expect("test cluster starts");
        cluster
    })
}

/// A fresh database for one test, with this crate's table only ([`dive_instances::MIGRATOR`]).
async fn fresh(name: &str) -> PgPool {
    let db = format!("instances_{name}");
    let cluster = cluster();
    cluster.create_database(&db).expect("test database");
    let pool = PgPool::connect(&cluster.url(&db).expect("url"))
        .await
        .expect("database connects");
    dive_instances::MIGRATOR
        .run(&pool)
        .await
        .expect("migrations");
    pool
}

fn registry(store: &PgPool) -> Instances {
    Instances::with_port_base(store.clone(), 20000).unwrap()
}

#[tokio::test]
async fn every_iso_code_gets_ports_of_its_own() {
    let store = fresh("every_code").await;
    let reg = registry(&store);
    let (hub, created) = reg
        .register("usa", Role::Hub, RuntimeKind::LOCAL)
        .await
        .unwrap();
    assert!(created);
    assert_eq!(hub.code, "USA");
    assert_eq!(hub.port_block, 0);
    for (code, _) in COUNTRIES.iter().filter(|(c, _)| *c != "USA") {
        let (rec, created) = reg
            .register(&code.to_ascii_lowercase(), Role::Spoke, RuntimeKind::DOCKER)
            .await
            .unwrap();
        assert!(created, "{code}");
        assert_eq!(rec.code, *code);
    }
    let all = reg.list().await.unwrap();
    assert_eq!(all.len(), 249);
    assert_eq!(all[0].code, "USA", "the hub is listed first");
    let blocks: HashSet<u32> = all.iter().map(|r| r.port_block).collect();
    assert_eq!(blocks, (0..249).collect(), "the lowest blocks, each once");

    // Every port of every instance is distinct and valid, with the default base and with a
    // base so high that the last block ends just below 65535.
    for base in [20000, 63000] {
        let reg = Instances::with_port_base(store.clone(), base).unwrap();
        let mut seen = HashSet::new();
        for rec in reg.list().await.unwrap() {
            let ports = rec.ports();
            assert_eq!(ports.postgres, base + 10 * rec.port_block as u16);
            assert_eq!(ports.keycloak, ports.postgres + 1);
            assert_eq!(ports.management, ports.postgres + 2);
            for port in ports.all() {
                assert!(port >= 1, "{} port {port}", rec.code);
                assert!(seen.insert(port), "{} port {port} collides", rec.code);
            }
            assert_eq!(
                rec.realm(),
                format!("dive-{}", rec.code.to_ascii_lowercase())
            );
            assert_eq!(
                rec.keycloak_url(),
                format!("https://127.0.0.1:{}", ports.keycloak)
            );
        }
        assert_eq!(seen.len(), 249 * 3);
    }
}

#[tokio::test]
async fn concurrent_registrations_get_distinct_blocks() {
    let store = fresh("concurrent").await;
    let reg = Arc::new(registry(&store));
    reg.register("USA", Role::Hub, RuntimeKind::LOCAL)
        .await
        .unwrap();
    let codes: Vec<&str> = COUNTRIES
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| *c != "USA")
        .take(20)
        .collect();
    let tasks: Vec<_> = codes
        .iter()
        .map(|code| {
            let reg = reg.clone();
            let code = code.to_string();
            tokio::spawn(async move { reg.register(&code, Role::Spoke, RuntimeKind::LOCAL).await })
        })
        .collect();
    let mut blocks = HashSet::new();
    for t in tasks {
        let (rec, created) = t.await.unwrap().unwrap();
        assert!(created);
        assert!(
            blocks.insert(rec.port_block),
            "block {} twice",
            rec.port_block
        );
    }
    assert_eq!(blocks, (1..=20).collect());

    // The same code from many tasks at once: one registration, one block, one creator.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let reg = reg.clone();
            tokio::spawn(async move { reg.register("fra", Role::Spoke, RuntimeKind::LOCAL).await })
        })
        .collect();
    let mut created = 0;
    let mut fra_blocks = HashSet::new();
    for t in tasks {
        let (rec, c) = t.await.unwrap().unwrap();
        created += usize::from(c);
        fra_blocks.insert(rec.port_block);
    }
    let already = codes.contains(&"FRA");
    assert_eq!(created, usize::from(!already));
    assert_eq!(fra_blocks.len(), 1);
    assert_eq!(reg.list().await.unwrap().len(), 21 + usize::from(!already));
}

#[tokio::test]
async fn registering_again_is_idempotent_and_conflicts_name_both_sides() {
    let store = fresh("idempotent").await;
    let reg = registry(&store);
    let (hub, _) = reg
        .register("USA", Role::Hub, RuntimeKind::LOCAL)
        .await
        .unwrap();
    let (first, created) = reg
        .register("FRA", Role::Spoke, RuntimeKind::LOCAL)
        .await
        .unwrap();
    assert!(created);
    let (again, created) = reg
        .register("fra", Role::Spoke, RuntimeKind::LOCAL)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(again.port_block, first.port_block);
    assert_eq!(again.created_at, first.created_at);
    assert!(again.updated_at >= first.updated_at);

    let e = reg
        .register("FRA", Role::Hub, RuntimeKind::LOCAL)
        .await
        .unwrap_err();
    assert!(matches!(e, InstanceError::RoleConflict { .. }), "{e:?}");
    assert!(e.is_invalid_input());
    let msg = e.to_string();
    assert!(
        msg.contains("FRA") && msg.contains("spoke") && msg.contains("hub"),
        "{msg}"
    );

    let e = reg
        .register("FRA", Role::Spoke, RuntimeKind::DOCKER)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("local") && msg.contains("docker"), "{msg}");

    let e = reg
        .register("GBR", Role::Hub, RuntimeKind::LOCAL)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("USA") && msg.contains("GBR"), "{msg}");

    let e = reg
        .register("XYZ", Role::Spoke, RuntimeKind::LOCAL)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "`XYZ` is not an ISO 3166-1 alpha-3 country code"
    );

    // The database enforces one hub and valid rows on its own too.
    let direct = sqlx::query(
        "INSERT INTO instances (code, role, runtime, port_block) \
         VALUES ('GBR', 'hub', 'local', 77)",
    )
    .execute(&store)
    .await;
    assert!(direct.is_err(), "a second hub row was accepted");

    assert_eq!(reg.get("usa").await.unwrap().unwrap(), hub);
    assert_eq!(reg.hub().await.unwrap().unwrap().code, "USA");
    assert!(reg.get("DEU").await.unwrap().is_none());
}

#[tokio::test]
async fn removing_frees_the_block_for_reuse() {
    let store = fresh("remove").await;
    let reg = registry(&store);
    reg.register("USA", Role::Hub, RuntimeKind::LOCAL)
        .await
        .unwrap();
    for code in ["FRA", "GBR", "DEU"] {
        reg.register(code, Role::Spoke, RuntimeKind::LOCAL)
            .await
            .unwrap();
    }
    let gbr = reg.get("GBR").await.unwrap().unwrap();
    assert_eq!(gbr.port_block, 2);
    let removed = reg.remove("gbr").await.unwrap().unwrap();
    assert_eq!(removed.code, "GBR");
    assert!(reg.remove("GBR").await.unwrap().is_none(), "second remove");
    let (ita, created) = reg
        .register("ITA", Role::Spoke, RuntimeKind::LOCAL)
        .await
        .unwrap();
    assert!(created);
    assert_eq!(ita.port_block, 2, "the freed block is the lowest free one");
    assert_eq!(ita.ports(), gbr.ports());
    let (nld, _) = reg
        .register("NLD", Role::Spoke, RuntimeKind::LOCAL)
        .await
        .unwrap();
    assert_eq!(nld.port_block, 4);

    // The hub can go and come back (on another code, too).
    reg.remove("USA").await.unwrap().unwrap();
    let (can, _) = reg
        .register("CAN", Role::Hub, RuntimeKind::LOCAL)
        .await
        .unwrap();
    assert_eq!(can.port_block, 0);
}

#[tokio::test]
async fn blocks_run_out_below_port_65536() {
    let store = fresh("exhausted").await;
    assert!(Instances::with_port_base(store.clone(), 80).is_err());
    assert!(Instances::with_port_base(store.clone(), 65530).is_err());
    let reg = Instances::with_port_base(store.clone(), 65500).unwrap();
    assert_eq!(reg.block_count().unwrap(), 3);
    reg.register("USA", Role::Hub, RuntimeKind::LOCAL)
        .await
        .unwrap();
    reg.register("FRA", Role::Spoke, RuntimeKind::LOCAL)
        .await
        .unwrap();
    let (last, _) = reg
        .register("GBR", Role::Spoke, RuntimeKind::LOCAL)
        .await
        .unwrap();
    assert_eq!(last.ports().management, 65522);
    let e = reg
        .register("DEU", Role::Spoke, RuntimeKind::LOCAL)
        .await
        .unwrap_err();
    assert!(matches!(e, InstanceError::PortsExhausted { .. }), "{e:?}");
    assert!(reg.get("DEU").await.unwrap().is_none());
}

#[tokio::test]
async fn a_run_recognises_its_own_registration() {
    let store = fresh("created_by").await;
    let reg = registry(&store);
    let run = sqlx::types::Uuid::now_v7();
    let other = sqlx::types::Uuid::now_v7();
    reg.register("USA", Role::Hub, RuntimeKind::LOCAL)
        .await
        .unwrap();
    let (_, created) = reg
        .register_for_run("FRA", Role::Spoke, RuntimeKind::LOCAL, run)
        .await
        .unwrap();
    assert!(created);
    // The phase ran again in the same run (a crash before its checkpoint): still its own.
    let (_, created) = reg
        .register_for_run("FRA", Role::Spoke, RuntimeKind::LOCAL, run)
        .await
        .unwrap();
    assert!(created);
    let (_, created) = reg
        .register_for_run("FRA", Role::Spoke, RuntimeKind::LOCAL, other)
        .await
        .unwrap();
    assert!(!created);
    assert!(!reg.remove_if_created_by("FRA", other).await.unwrap());
    assert!(reg.get("FRA").await.unwrap().is_some());
    assert!(reg.remove_if_created_by("FRA", run).await.unwrap());
    assert!(reg.get("FRA").await.unwrap().is_none());
}

/// The database does not list runtimes (a runtime added in code needs no migration): a name no
/// registered runtime has is refused when the row is read, naming it.
#[tokio::test]
async fn an_unknown_runtime_in_a_row_is_reported_not_guessed() {
    let pool = fresh("unknown_runtime").await;
    sqlx::query(
        "INSERT INTO instances (code, role, runtime, port_block) VALUES ('FRA', 'spoke', 'k8s', 3)",
    )
    .execute(&pool)
    .await
    .expect("the database takes any runtime name");
    let err = registry(&pool).get("FRA").await.unwrap_err().to_string();
    assert!(err.contains("unknown runtime `k8s`"), "{err}");
}
