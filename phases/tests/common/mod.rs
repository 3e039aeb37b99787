//! What the phase tests share: the state database with every table dive keeps in it.

use dive_engine::Store;
use sqlx::migrate::Migrator;

/// The migrations of the domain crates the phase types use, besides the engine's (what the CLI
/// applies, `src/database.rs`).
pub static MIGRATORS: [&Migrator; 3] = [
    &dive_secrets::MIGRATOR,
    &dive_instances::MIGRATOR,
    &dive_verify::MIGRATOR,
];

/// Opens `url` and applies the engine's migrations and [`MIGRATORS`].
pub async fn open_store(url: &str) -> Store {
    Store::open_with(url, &MIGRATORS)
        .await
        .expect("store opens")
}
