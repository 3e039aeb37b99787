//! A fresh cache: the Keycloak distribution is unpacked and built once, and each step says so
//! with how long it took — the lines the CLI shows while a machine's first deploy waits.

use dive_runtime::KeycloakDist;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Log output kept in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).to_string()
    }
}

#[tokio::test]
async fn a_fresh_cache_builds_the_distribution_once_and_says_each_step() {
    let cache = tempfile::tempdir().unwrap();
    let dist = KeycloakDist::new(cache.path());
    // The download from the machine's cache when there is one (Maven fetches it otherwise).
    let zip = format!("keycloak-quarkus-dist-{}.zip", dist.version);
    let shared = std::env::var_os("DIVE_CACHE").map(|c| Path::new(&c).join("keycloak").join(&zip));
    let fetched = match shared.filter(|z| z.exists()) {
        Some(z) => {
            std::fs::create_dir_all(cache.path().join("keycloak")).unwrap();
            std::fs::copy(z, cache.path().join("keycloak").join(&zip)).unwrap();
            false
        }
        None => true,
    };

    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let built = dist.built().await.unwrap();
    assert!(built.join("bin/kc.sh").exists());
    let text = log.text();
    if fetched {
        assert!(text.contains("Keycloak distribution: fetched "), "{text}");
    }
    assert!(
        text.contains("Keycloak distribution: unpacking it"),
        "{text}"
    );
    assert!(
        text.contains("building it (kc.sh build --db=postgres --health-enabled=true"),
        "{text}"
    );
    assert!(text.contains("Keycloak distribution: built in "), "{text}");

    // Asked again: already there, nothing to say.
    let lines = text.lines().count();
    assert_eq!(dist.built().await.unwrap(), built);
    assert_eq!(log.text().lines().count(), lines);
}
