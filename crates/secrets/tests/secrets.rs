//! The secret store against a real PostgreSQL: encryption at rest, versions, ensure semantics,
//! key checks, tamper detection.

use dive_error::Classify;
use dive_pgcluster::{Cluster, StopMode};
use dive_secrets::{
    Alphabet, KeySource, MasterKey, Secret, SecretError, SecretStore, validate_name,
};
use sqlx::PgPool;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, OnceLock};

struct Db {
    cluster: Cluster,
}

/// A cluster under the target tmp dir, wiped and started on first use in this process.
fn cluster() -> &'static Cluster {
    static DB: OnceLock<Db> = OnceLock::new();
    &DB.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("secrets-pg");
        let cluster = Cluster::new(&root);
        let _ = cluster.stop(StopMode::Immediate);
        let _ = std::fs::remove_dir_all(&root);
        cluster.ensure_running().expect("test cluster starts");
        Db { cluster }
    })
    .cluster
}

/// A fresh database for one test, with this crate's tables only ([`dive_secrets::MIGRATOR`]).
async fn fresh(name: &str) -> (PgPool, String) {
    let db = format!("secrets_{name}");
    let cluster = cluster();
    cluster.create_database(&db).expect("test database");
    let pool = PgPool::connect(&cluster.url(&db).expect("url"))
        .await
        .expect("database connects");
    dive_secrets::MIGRATOR.run(&pool).await.expect("migrations");
    (pool, db)
}

fn key(byte: u8) -> MasterKey {
    MasterKey::from_bytes([byte; 32], KeySource::Env)
}

fn store(s: &PgPool, key: MasterKey) -> SecretStore {
    SecretStore::new(s.clone(), key)
}

/// Everything in the secret tables, as text, to compare before and after.
async fn dump_tables(s: &PgPool) -> String {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT t::text FROM secrets t \
         UNION ALL SELECT 'keycheck ' || k::text FROM secret_keycheck k ORDER BY 1",
    )
    .fetch_all(s)
    .await
    .unwrap();
    rows.join("\n")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn round_trip_and_metadata() {
    let (db, _) = fresh("round_trip").await;
    let secrets = store(&db, key(1));
    let v = secrets
        .put(
            "usa/keycloak/admin-password",
            &Secret::new("correct horse battery staple"),
        )
        .await
        .unwrap();
    assert_eq!(v, 1);
    let (value, version) = secrets
        .get("usa/keycloak/admin-password")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (value.expose(), version),
        ("correct horse battery staple", 1)
    );
    assert!(secrets.get("usa/keycloak/other").await.unwrap().is_none());

    // A second store with the same key (another process) reads it too.
    let again = store(&db, key(1));
    let (value, _) = again
        .get("usa/keycloak/admin-password")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value.expose(), "correct horse battery staple");

    let list = secrets.list().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, "usa/keycloak/admin-password");
    assert_eq!((list[0].versions, list[0].latest), (1, 1));
    let json = serde_json::to_string(&list).unwrap();
    assert!(!json.contains("correct horse"), "{json}");
    assert_eq!(
        secrets.info("usa/keycloak/admin-password").await.unwrap(),
        Some(list[0].clone())
    );
}

#[tokio::test]
async fn versions_increase_and_old_versions_stay_readable() {
    let (db, _) = fresh("versions").await;
    let secrets = store(&db, key(2));
    let name = "federation/usa/fra/client-secret";
    for (i, value) in ["first", "second", "third"].iter().enumerate() {
        assert_eq!(
            secrets.put(name, &Secret::new(*value)).await.unwrap(),
            i as u32 + 1
        );
    }
    let (latest, v) = secrets.get(name).await.unwrap().unwrap();
    assert_eq!((latest.expose(), v), ("third", 3));
    assert_eq!(
        secrets
            .get_version(name, 1)
            .await
            .unwrap()
            .unwrap()
            .expose(),
        "first"
    );
    assert_eq!(
        secrets
            .get_version(name, 2)
            .await
            .unwrap()
            .unwrap()
            .expose(),
        "second"
    );
    assert!(secrets.get_version(name, 4).await.unwrap().is_none());
    assert!(secrets.get_version(name, u32::MAX).await.unwrap().is_none());
    let info = secrets.info(name).await.unwrap().unwrap();
    assert_eq!((info.versions, info.latest), (3, 3));
    assert!(info.updated_at >= info.created_at);

    // Concurrent puts each get their own version.
    let secrets = Arc::new(secrets);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let s = secrets.clone();
            tokio::spawn(async move { s.put("race", &Secret::new(format!("v{i}"))).await })
        })
        .collect();
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap().unwrap());
    }
    versions.sort();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
}

#[tokio::test]
async fn ensure_is_idempotent_and_generates_what_was_asked() {
    let (db, _) = fresh("ensure").await;
    let secrets = Arc::new(store(&db, key(3)));
    let name = "usa/keycloak/admin-password";
    assert_eq!(
        secrets.ensure(name, 40, Alphabet::Hex).await.unwrap(),
        (1, true)
    );
    let (first, _) = secrets.get(name).await.unwrap().unwrap();
    assert_eq!(first.len(), 40);
    assert!(first.expose().bytes().all(|b| b.is_ascii_hexdigit()));
    // Again, even with other settings: the existing value stays.
    assert_eq!(
        secrets
            .ensure(name, 16, Alphabet::Alphanumeric)
            .await
            .unwrap(),
        (1, false)
    );
    assert_eq!(
        secrets.get(name).await.unwrap().unwrap().0.expose(),
        first.expose()
    );
    // After a rotation (put), ensure reports the latest version and leaves it alone.
    secrets.put(name, &Secret::new("rotated")).await.unwrap();
    assert_eq!(
        secrets.ensure(name, 32, Alphabet::Hex).await.unwrap(),
        (2, false)
    );

    // Concurrent ensures of a new name create it exactly once.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let s = secrets.clone();
            tokio::spawn(async move { s.ensure("fra/db/password", 32, Alphabet::default()).await })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        let (v, c) = t.await.unwrap().unwrap();
        assert_eq!(v, 1);
        created += c as usize;
    }
    assert_eq!(created, 1);
    let info = secrets.info("fra/db/password").await.unwrap().unwrap();
    assert_eq!(info.versions, 1);

    for bad in [0, 7, 4097] {
        let err = secrets.ensure("x", bad, Alphabet::Hex).await.unwrap_err();
        assert!(matches!(err, SecretError::InvalidLength { .. }), "{err}");
    }
}

#[tokio::test]
async fn stored_rows_do_not_contain_the_plaintext() {
    let (db, dbname) = fresh("at_rest").await;
    let secrets = store(&db, key(4));
    let value = "PlainTextCanary-0123456789-abcdefghijklmnop";
    let name = "usa/keycloak/admin-password";
    secrets.put(name, &Secret::new(value)).await.unwrap();
    secrets.put(name, &Secret::new(value)).await.unwrap();

    let rows: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as("SELECT nonce, ciphertext FROM secrets")
        .fetch_all(&db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_ne!(
        rows[0], rows[1],
        "same value, different nonce and ciphertext"
    );
    for (nonce, ct) in &rows {
        assert_eq!(nonce.len(), 12);
        assert_eq!(ct.len(), value.len() + 16, "ciphertext plus GCM tag");
        assert!(
            !ct.windows(8)
                .any(|w| value.as_bytes().windows(8).any(|v| v == w)),
            "ciphertext shares 8 bytes with the plaintext"
        );
    }

    // Text dumps: a row cast to text, psql output, and pg_dump.
    let mut dumps = vec![dump_tables(&db).await];
    dumps.push(cluster().psql(&dbname, "SELECT * FROM secrets").unwrap());
    let pg_dump = dive_pgcluster::find_bin_dir().unwrap().join("pg_dump");
    let out = std::process::Command::new(pg_dump)
        .args([
            "--data-only",
            "--table=secrets",
            "--table=secret_keycheck",
            "-d",
        ])
        .arg(cluster().url(&dbname).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dumps.push(String::from_utf8(out.stdout).unwrap());
    for dump in &dumps {
        assert!(dump.contains(name), "the dump shows the rows: {dump}");
        assert!(!dump.contains(value), "plaintext in dump: {dump}");
        assert!(
            !dump.contains(&hex(value.as_bytes())),
            "hex plaintext in dump"
        );
        assert!(!dump.contains("PlainTextCanary"));
    }
}

#[tokio::test]
async fn values_never_show_in_debug_display_or_errors() {
    let value = "SuperSecretValue-xyz-42";
    let s = Secret::new(value);
    for text in [format!("{s}"), format!("{s:?}"), format!("{s:#?}")] {
        assert_eq!(text, "[redacted]");
    }
    let pair = Some((s.clone(), 3u32));
    assert!(!format!("{pair:?}").contains(value));

    let k = MasterKey::generate();
    let k_b64 = k.to_base64();
    assert!(!format!("{k:?}").contains(k_b64.as_str()));

    let (db, _) = fresh("redaction").await;
    let secrets = store(&db, MasterKey::from_base64(&k_b64, KeySource::Env).unwrap());
    assert!(!format!("{secrets:?}").contains(k_b64.as_str()));
    secrets.put("a/one", &Secret::new(value)).await.unwrap();
    secrets.put("a/two", &Secret::new("other")).await.unwrap();
    sqlx::query(
        "UPDATE secrets SET ciphertext = (SELECT ciphertext FROM secrets WHERE name = 'a/one'), \
         nonce = (SELECT nonce FROM secrets WHERE name = 'a/one') WHERE name = 'a/two'",
    )
    .execute(&db)
    .await
    .unwrap();
    let mut errors = vec![secrets.get("a/two").await.unwrap_err()];
    errors.push(
        store(&db, MasterKey::generate())
            .get("a/one")
            .await
            .unwrap_err(),
    );
    errors.push(MasterKey::from_base64(&k_b64[..20], KeySource::Env).unwrap_err());
    errors.push(MasterKey::from_base64(&format!("{}!", &k_b64[..43]), KeySource::Env).unwrap_err());
    errors.push(validate_name("Bad Name").unwrap_err());
    for e in &errors {
        for text in [e.to_string(), format!("{e:?}")] {
            assert!(!text.contains(value), "{text}");
            assert!(!text.contains(&k_b64[..20]), "key material in: {text}");
        }
    }
}

/// A missing key file is not silently replaced: the key made in its place is refused against a
/// store that holds secrets, and the new file is removed again, so restoring the original works.
#[tokio::test]
async fn a_missing_key_file_is_not_replaced_when_secrets_exist() {
    let (db, _) = fresh("missing_key").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let original = MasterKey::load_from(None, &path).unwrap();
    assert!(matches!(original.source(), KeySource::Created(_)));
    store(&db, original)
        .put("usa/x", &Secret::new("v1"))
        .await
        .unwrap();
    let saved = std::fs::read(&path).unwrap();

    std::fs::remove_file(&path).unwrap();
    let replacement = MasterKey::load_from(None, &path).unwrap();
    let e = store(&db, replacement).verify_key().await.unwrap_err();
    assert!(matches!(e, SecretError::MissingKey { .. }), "{e:?}");
    assert!(e.to_string().contains("is missing"), "{e}");
    assert!(!path.exists(), "the replacement key file was left behind");

    std::fs::write(&path, &saved).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let restored = MasterKey::load_from(None, &path).unwrap();
    assert!(matches!(restored.source(), KeySource::File(_)));
    let secrets = store(&db, restored);
    secrets.verify_key().await.unwrap();
    assert!(secrets.get("usa/x").await.unwrap().is_some());
}

#[tokio::test]
async fn a_wrong_master_key_is_refused_before_anything_changes() {
    let (db, _) = fresh("wrong_key").await;
    let right = store(&db, key(5));
    right
        .put("usa/keycloak/admin-password", &Secret::new("v1"))
        .await
        .unwrap();
    right
        .ensure("usa/db/password", 32, Alphabet::Hex)
        .await
        .unwrap();
    let before = dump_tables(&db).await;

    let wrong = store(&db, key(6));
    let expected = "the master key does not match the one these secrets were written with \
                    (key from DIVE_MASTER_KEY)";
    let mut errors = vec![
        wrong.get("usa/keycloak/admin-password").await.unwrap_err(),
        wrong
            .get_version("usa/keycloak/admin-password", 1)
            .await
            .unwrap_err(),
        wrong
            .put("usa/keycloak/admin-password", &Secret::new("v2"))
            .await
            .unwrap_err(),
        wrong.put("new/name", &Secret::new("v")).await.unwrap_err(),
        wrong
            .ensure("usa/db/password", 32, Alphabet::Hex)
            .await
            .unwrap_err(),
        wrong
            .ensure("new/other", 32, Alphabet::Hex)
            .await
            .unwrap_err(),
        wrong.delete_prefix("usa").await.unwrap_err(),
    ];
    errors.push(wrong.verify_key().await.unwrap_err());
    for e in &errors {
        assert!(matches!(e, SecretError::WrongKey { .. }), "{e:?}");
        assert!(e.to_string().contains(expected), "{e}");
        assert!(!e.is_retryable());
    }
    assert_eq!(dump_tables(&db).await, before, "nothing changed");
    // The key source is named as it is: a file key says which file.
    let from_file = store(
        &db,
        MasterKey::from_bytes([6; 32], KeySource::File("/srv/dive/master.key".into())),
    );
    let e = from_file.get("usa/db/password").await.unwrap_err();
    assert!(
        e.to_string()
            .contains("(key from file /srv/dive/master.key)"),
        "{e}"
    );

    // Listing reads no value and works with any key; the right key still works.
    assert_eq!(wrong.list().await.unwrap().len(), 2);
    assert!(right.get("usa/db/password").await.unwrap().is_some());

    // Without the check row (lost), a wrong key is still caught by an existing secret.
    sqlx::query("DELETE FROM secret_keycheck")
        .execute(&db)
        .await
        .unwrap();
    let wrong = store(&db, key(6));
    let e = wrong.put("x", &Secret::new("v")).await.unwrap_err();
    assert!(matches!(e, SecretError::WrongKey { .. }), "{e}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM secret_keycheck")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 0);
    store(&db, key(5)).verify_key().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM secret_keycheck")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 1, "the right key wrote the check row again");
}

#[test]
fn malformed_keys_say_where_they_came_from_and_what_is_expected() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("master.key");
    let expected = "expected 32 random bytes in standard base64";

    for (bad, problem) in [
        ("not base64!!", "not valid standard base64"),
        (
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "decodes to 16 bytes instead of 32",
        ),
        ("   ", "empty"),
    ] {
        let e = MasterKey::load_from(Some(bad), &file).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, SecretError::MalformedKey { .. }));
        assert!(e.is_invalid_input());
        assert!(text.contains("from DIVE_MASTER_KEY"), "{text}");
        assert!(text.contains(expected), "{text}");
        assert!(text.contains(problem), "{text}");
        if !bad.trim().is_empty() {
            assert!(!text.contains(bad), "{text}");
        }
    }
    assert!(!file.exists(), "a bad environment key creates no file");

    // Absent file: created 0600 with a fresh key; the next load reads the same key.
    let home = dir.path().join("home/dive");
    let path = home.join("master.key");
    let k1 = MasterKey::load_from(None, &path).unwrap();
    assert_eq!(k1.source(), &KeySource::Created(path.clone()));
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let k2 = MasterKey::load_from(Some(""), &path).unwrap();
    assert_eq!(k1.to_base64(), k2.to_base64(), "empty variable: the file");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim(), k1.to_base64().as_str());
    assert_eq!(text.trim().len(), 44);
    let leftovers: Vec<_> = std::fs::read_dir(&home).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    // The environment wins over the file.
    let env_key = MasterKey::generate().to_base64();
    let k3 = MasterKey::load_from(Some(&env_key), &path).unwrap();
    assert_eq!(k3.source(), &KeySource::Env);
    assert_eq!(k3.to_base64(), env_key);

    // A malformed file names the file.
    std::fs::write(&path, "c2hvcnQ=\n").unwrap();
    let e = MasterKey::load_from(None, &path).unwrap_err().to_string();
    assert!(e.contains(&format!("from file {}", path.display())), "{e}");
    assert!(e.contains("decodes to 5 bytes instead of 32"), "{e}");
    assert!(e.contains(expected), "{e}");
    std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
    let e = MasterKey::load_from(None, &path).unwrap_err().to_string();
    assert!(e.contains("not UTF-8"), "{e}");
    // An unreadable path (a directory) is an I/O error naming the path.
    let e = MasterKey::load_from(None, dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("master key file"), "{e}");
    assert!(e.contains(&dir.path().display().to_string()), "{e}");
}

#[tokio::test]
async fn swapped_rows_do_not_decrypt() {
    let (db, _) = fresh("swapped").await;
    let secrets = store(&db, key(7));
    secrets
        .put("usa/a", &Secret::new("value-of-a"))
        .await
        .unwrap();
    secrets
        .put("usa/b", &Secret::new("value-of-b"))
        .await
        .unwrap();
    secrets
        .put("usa/b", &Secret::new("value-of-b2"))
        .await
        .unwrap();

    // Another name's ciphertext (with its nonce) copied over this one.
    sqlx::query(
        "UPDATE secrets SET (nonce, ciphertext) = \
         (SELECT nonce, ciphertext FROM secrets WHERE name = 'usa/a' AND version = 1) \
         WHERE name = 'usa/b' AND version = 2",
    )
    .execute(&db)
    .await
    .unwrap();
    let e = secrets.get("usa/b").await.unwrap_err();
    assert!(
        matches!(&e, SecretError::Undecryptable { name, version } if name == "usa/b" && *version == 2),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("secret `usa/b` version 2 cannot be decrypted"),
        "{text}"
    );
    assert!(!text.contains("value-of"), "{text}");
    // ensure checks the latest version decrypts instead of reporting it as fine.
    assert!(matches!(
        secrets
            .ensure("usa/b", 32, Alphabet::Hex)
            .await
            .unwrap_err(),
        SecretError::Undecryptable { .. }
    ));
    // The untouched version is still readable.
    assert_eq!(
        secrets
            .get_version("usa/b", 1)
            .await
            .unwrap()
            .unwrap()
            .expose(),
        "value-of-b"
    );

    // Same name, another version's ciphertext.
    sqlx::query(
        "UPDATE secrets SET (nonce, ciphertext) = \
         (SELECT nonce, ciphertext FROM secrets WHERE name = 'usa/b' AND version = 1) \
         WHERE name = 'usa/b' AND version = 2",
    )
    .execute(&db)
    .await
    .unwrap();
    assert!(matches!(
        secrets.get("usa/b").await.unwrap_err(),
        SecretError::Undecryptable { version: 2, .. }
    ));

    // A flipped bit.
    sqlx::query(
        "UPDATE secrets SET ciphertext = set_byte(ciphertext, 0, get_byte(ciphertext, 0) # 1) \
         WHERE name = 'usa/a'",
    )
    .execute(&db)
    .await
    .unwrap();
    assert!(matches!(
        secrets.get("usa/a").await.unwrap_err(),
        SecretError::Undecryptable { .. }
    ));
}

#[tokio::test]
async fn names_are_validated_and_delete_prefix_is_segment_wise() {
    let (db, _) = fresh("names").await;
    let secrets = store(&db, key(8));
    for bad in ["", "USA/x", "usa//x", "usa/../x", "/usa", "usa x", "usa/x/"] {
        let e = secrets.put(bad, &Secret::new("v")).await.unwrap_err();
        assert!(matches!(e, SecretError::InvalidName { .. }), "{bad:?}: {e}");
        assert!(e.to_string().contains("invalid secret name"), "{e}");
    }
    // The database refuses them too.
    let e = sqlx::query(
        "INSERT INTO secrets (name, version, nonce, ciphertext) \
         VALUES ('Bad/Name', 1, '\\x000000000000000000000000', '\\x00000000000000000000000000000000')",
    )
    .execute(&db)
    .await
    .unwrap_err();
    assert!(e.to_string().contains("check constraint"), "{e}");

    for name in ["usa", "usa/a", "usa/b/c", "usability/x", "fra/usa"] {
        secrets.put(name, &Secret::new("v")).await.unwrap();
    }
    secrets.put("usa/a", &Secret::new("v2")).await.unwrap();
    let removed = secrets.delete_prefix("usa/").await.unwrap();
    assert_eq!(removed, ["usa", "usa/a", "usa/b/c"]);
    let left: Vec<String> = secrets
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(left, ["fra/usa", "usability/x"]);
    assert!(secrets.delete_prefix("usa").await.unwrap().is_empty());
    assert!(matches!(
        secrets.delete_prefix("").await.unwrap_err(),
        SecretError::InvalidName { .. }
    ));
}

#[tokio::test]
async fn mint_is_once_per_origin_and_unmint_restores_the_previous_version() {
    let (pool, _) = fresh("mint").await;
    let s = store(&pool, key(7));
    let name = "federation/usa/fra/client-secret";
    // A rotation replaces a secret; it does not create one.
    let err = s
        .mint(name, "run:a", 32, Alphabet::Alphanumeric)
        .await
        .unwrap_err();
    assert!(matches!(err, SecretError::NotFound(_)), "{err}");
    s.ensure(name, 32, Alphabet::Alphanumeric).await.unwrap();
    let (v1, _) = s.get(name).await.unwrap().unwrap();

    let (v, created) = s
        .mint(name, "run:a", 32, Alphabet::Alphanumeric)
        .await
        .unwrap();
    assert_eq!((v, created), (2, true));
    let (minted, _) = s.get(name).await.unwrap().unwrap();
    assert_ne!(minted.expose(), v1.expose());
    // The same origin again (a resumed run): the same version, nothing written.
    let before = dump_tables(&pool).await;
    assert_eq!(
        s.mint(name, "run:a", 32, Alphabet::Alphanumeric)
            .await
            .unwrap(),
        (2, false)
    );
    assert_eq!(dump_tables(&pool).await, before);
    assert_eq!(s.minted_by(name, "run:a").await.unwrap(), Some(2));
    assert_eq!(s.minted_by(name, "run:b").await.unwrap(), None);

    // Another run mints on top; the first cannot take its version back any more.
    assert_eq!(
        s.mint(name, "run:b", 32, Alphabet::Alphanumeric)
            .await
            .unwrap(),
        (3, true)
    );
    let err = s.unmint(name, "run:a").await.unwrap_err();
    assert!(err.to_string().contains("version 3"), "{err}");
    assert_eq!(s.unmint(name, "run:b").await.unwrap(), Some(3));
    assert_eq!(s.unmint(name, "run:b").await.unwrap(), None, "idempotent");
    assert_eq!(s.unmint(name, "run:a").await.unwrap(), Some(2));
    let (current, version) = s.get(name).await.unwrap().unwrap();
    assert_eq!((current.expose(), version), (v1.expose(), 1));
}

#[tokio::test]
async fn prune_keeps_the_latest_versions() {
    let (pool, _) = fresh("prune").await;
    let s = store(&pool, key(8));
    let name = "fra/users/testuser-fra-1";
    s.ensure(name, 24, Alphabet::Alphanumeric).await.unwrap();
    for i in 0..4 {
        s.mint(name, &format!("run:{i}"), 24, Alphabet::Alphanumeric)
            .await
            .unwrap();
    }
    assert_eq!(s.prune(name, 3).await.unwrap(), 2);
    let info = s.info(name).await.unwrap().unwrap();
    assert_eq!((info.versions, info.latest), (3, 5));
    assert!(s.get_version(name, 2).await.unwrap().is_none());
    assert!(s.get_version(name, 3).await.unwrap().is_some());
    assert_eq!(s.prune(name, 3).await.unwrap(), 0);
    // At least one version stays, whatever is asked.
    assert_eq!(s.prune(name, 0).await.unwrap(), 2);
    assert_eq!(s.info(name).await.unwrap().unwrap().versions, 1);
}
