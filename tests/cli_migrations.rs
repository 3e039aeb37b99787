//! The state database's migrations since each crate ships its own (`migrations/<owner>/`): a
//! database migrated by the old single migrator (all of `migrations/` in one folder) or by the
//! engine alone is brought up to date by `dive db migrate` without a checksum error and without
//! re-running anything; later migrations are applied on top.

mod common;

use common::TestEnv;
use dive_engine::Store;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use std::path::Path;

/// SHA-384 of every migration file as the old single migrator embedded it: what existing
/// databases recorded in `_sqlx_migrations`. A file whose content changes breaks them all.
const RECORDED: [(i64, &str); 5] = [
    (
        1,
        "e5528654090ea29c5503ad27a18b8d3f34bf1eb95fe7975af47fe1fbfb8db4d97f05ea7b167de9f60c2b65a71ee09e27",
    ),
    (
        2,
        "fcd6e73ee8a6c2debd0d50843233748ed723c997636e676fbe3aad942bbe494c037e2c9924208c74a4e0a7f15567e860",
    ),
    (
        3,
        "7b58c7bf085b36b2a295933b7c937d5985eb479897f32b11fcc6c7efb097be16a84949eb91c0accd59f7722a7e8bc436",
    ),
    (
        4,
        "f1cac9d0e0ce4b9d397e0937eec42192ec13e42c39f0a9f377456d90754e9524100aa61fd5838bf54e2ef56772dee053",
    ),
    (
        5,
        "12bb1e895380a23640e2ab9d19a87fb45c24decd7df964ff7c248a697eceb18d6cff891b6579989fc0732459c1f356ed",
    ),
];

/// Every migration version dive has now, in order (the pre-split ones and those added since).
const ALL: [i64; 13] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];

/// The migrator dive had before the split: every file that existed then, in one folder,
/// resolved the way `sqlx::migrate!("../migrations")` resolved them.
async fn old_single_migrator(dir: &Path) -> Migrator {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files = 0;
    for owner in std::fs::read_dir(&root).expect("migrations/") {
        let owner = owner.expect("migrations/ entry").path();
        if !owner.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&owner).expect("owner folder") {
            let file = file.expect("owner folder entry").path();
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            let version: i64 = name.split('_').next().unwrap().parse().unwrap();
            if !RECORDED.iter().any(|(v, _)| *v == version) {
                continue;
            }
            std::fs::copy(&file, dir.join(file.file_name().unwrap())).expect("copy");
            files += 1;
        }
    }
    assert_eq!(
        files,
        RECORDED.len(),
        "every pre-split migration file, once"
    );
    Migrator::new(dir).await.expect("old layout resolves")
}

/// Every row of `_sqlx_migrations`, installation time included (so a re-run shows).
fn recorded_rows(env: &TestEnv) -> Vec<String> {
    env.psql(
        "SELECT version || ' ' || description || ' ' || success || ' ' || encode(checksum, 'hex') \
         || ' ' || installed_on FROM _sqlx_migrations ORDER BY version",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

fn versions(env: &TestEnv) -> Vec<i64> {
    env.psql("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .lines()
        .map(|v| v.parse().unwrap())
        .collect()
}

/// `dive db status --json` lists every owner's migrations, all applied.
fn assert_status_all_applied(env: &TestEnv) {
    let status = env.dive(&["db", "status", "--json"]);
    status.assert_code(0);
    let migrations = status.json()["migrations"].clone();
    let listed: Vec<(i64, bool)> = migrations
        .as_array()
        .expect("migrations array")
        .iter()
        .map(|m| {
            (
                m["version"].as_i64().unwrap(),
                m["applied"].as_bool().unwrap(),
            )
        })
        .collect();
    let all_applied: Vec<(i64, bool)> = ALL.iter().map(|v| (*v, true)).collect();
    assert_eq!(listed, all_applied, "{migrations}");
}

#[tokio::test]
async fn a_database_of_the_old_single_migrator_gets_only_what_came_since() {
    let env = TestEnv::new();
    let old_dir = tempfile::tempdir().unwrap();
    let pool = PgPool::connect(&env.url).await.unwrap();
    old_single_migrator(old_dir.path())
        .await
        .run(&pool)
        .await
        .expect("the old migrator migrates a fresh database");
    pool.close().await;
    let before = recorded_rows(&env);
    assert_eq!(before.len(), 5, "{before:?}");

    let out = env.dive(&["db", "migrate"]);
    out.assert_code(0);
    assert!(
        out.stderr
            .contains(&format!("up to date ({} migrations)", ALL.len())),
        "{}",
        out.stderr
    );
    assert_eq!(
        recorded_rows(&env)[..before.len()],
        before,
        "nothing applied again, nothing changed"
    );
    assert_eq!(versions(&env), ALL);
    assert_status_all_applied(&env);
}

#[tokio::test]
async fn an_engine_only_database_gets_the_other_crates_tables() {
    let env = TestEnv::new();
    Store::open(&env.url).await.expect("engine migrations");
    let engine_versions = versions(&env);
    assert_eq!(engine_versions, vec![1, 5, 6, 9, 10, 11, 12, 13]);
    assert!(env.try_psql("SELECT count(*) FROM secrets").is_err());
    let engine_rows = recorded_rows(&env);

    env.dive(&["db", "migrate"]).assert_code(0);
    assert_eq!(versions(&env), ALL);
    let rows: Vec<String> = recorded_rows(&env)
        .into_iter()
        .filter(|r| {
            let v: i64 = r.split(' ').next().unwrap().parse().unwrap();
            engine_versions.contains(&v)
        })
        .collect();
    assert_eq!(
        rows, engine_rows,
        "the engine's migrations are not applied again"
    );
    for table in [
        "secrets",
        "secret_keycheck",
        "instances",
        "federation_links",
        "federation_verifications",
        "runs",
    ] {
        assert_eq!(env.psql(&format!("SELECT count(*) FROM {table}")), "0");
    }
    assert_status_all_applied(&env);
}

#[tokio::test]
async fn checksums_are_the_ones_existing_databases_recorded() {
    let env = TestEnv::new();
    env.dive(&["db", "migrate"]).assert_code(0);
    let recorded: Vec<String> = env
        .psql("SELECT version || ' ' || encode(checksum, 'hex') FROM _sqlx_migrations ORDER BY version")
        .lines()
        .map(str::to_string)
        .collect();
    let expected: Vec<String> = RECORDED.iter().map(|(v, c)| format!("{v} {c}")).collect();
    assert_eq!(recorded[..RECORDED.len()], expected);
}

#[tokio::test]
async fn the_engine_alone_refuses_a_database_with_other_crates_migrations() {
    // Opening with fewer owners than the database has is an error naming the missing version,
    // not a silent partial schema (dive always passes every owner).
    let env = TestEnv::new();
    env.dive(&["db", "migrate"]).assert_code(0);
    let err = Store::open(&env.url).await.err().expect("refused");
    assert!(err.to_string().contains("migration 2 "), "{err}");
}
