//! The Keycloak server distribution for the local runtime: fetched once with Maven into the
//! download cache, unpacked, built once (`kc.sh build` for PostgreSQL with health enabled), then
//! given to each instance as a hard-linked copy so instances keep their own `data/` and can be
//! started with `--optimized`.

use fs4::fs_std::FileExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The pinned Keycloak version (a version Maven Central serves here).
pub const KEYCLOAK_VERSION: &str = "26.5.5";
/// Options baked in by `kc.sh build`; `start --optimized` must not contradict them.
/// Keycloak's build-time options (`kc.sh build`): PostgreSQL, health endpoints, and the
/// `client-secret-rotation` preview feature that secret rotation relies on. The Docker image
/// (images/keycloak/Dockerfile) is built with the same options.
pub const BUILD_OPTIONS: [&str; 3] = [
    "--db=postgres",
    "--health-enabled=true",
    "--features=client-secret-rotation",
];

/// Options of every `kc.sh start`, on both runtimes: the local (single-node) cache. Each
/// instance is one Keycloak, so it needs no cluster: with the default clustered cache every
/// Keycloak listened on all interfaces (cluster ports 7800 and 57800 upwards, five of them
/// shared by the whole machine, so a sixth local Keycloak failed to start).
pub const START_OPTIONS: [&str; 1] = ["--cache=local"];

/// Which Keycloak distribution, and where downloads are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeycloakDist {
    /// The download cache (`DIVE_CACHE`); the distribution goes to `<cache>/keycloak`.
    pub cache: PathBuf,
    /// A version Maven Central serves (default [`KEYCLOAK_VERSION`]).
    pub version: String,
}

impl KeycloakDist {
    /// The pinned version, cached under `cache`.
    pub fn new(cache: impl Into<PathBuf>) -> KeycloakDist {
        KeycloakDist {
            cache: cache.into(),
            version: KEYCLOAK_VERSION.into(),
        }
    }
}

/// Why the distribution could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// A step on this machine failed (a directory, the lock, a command that does not start):
    /// trying again will not help.
    #[error("keycloak distribution: {0}")]
    Setup(String),
    /// A command ran and failed (Maven, unpacking, `kc.sh build`, copying): it may pass when
    /// tried again.
    #[error("keycloak distribution: {0}")]
    Command(String),
}

impl dive_error::Classify for DistError {
    fn is_retryable(&self) -> bool {
        matches!(self, DistError::Command(_))
    }
}

fn fatal(what: &str, e: impl std::fmt::Display) -> DistError {
    DistError::Setup(format!("{what}: {e}"))
}

async fn run(cmd: &mut tokio::process::Command, what: &str) -> Result<(), DistError> {
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|e| fatal(what, e))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tail: Vec<&str> = text.lines().rev().take(8).collect();
    Err(DistError::Command(format!(
        "{what} failed ({}): {}",
        out.status,
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    )))
}

impl KeycloakDist {
    /// The built distribution in the cache, fetching and building it the first time.
    /// Safe when several deploys ask at once (an exclusive lock file).
    pub async fn built(&self) -> Result<PathBuf, DistError> {
        built_distribution(&self.cache.join("keycloak"), &self.version).await
    }

    /// The instance's own copy (hard links into the cache when on the same file system).
    pub async fn instance_copy(&self, instance_dir: &Path) -> Result<PathBuf, DistError> {
        instance_copy(&self.built().await?, instance_dir).await
    }
}

async fn built_distribution(root: &Path, version: &str) -> Result<PathBuf, DistError> {
    std::fs::create_dir_all(root).map_err(|e| fatal(&root.display().to_string(), e))?;
    let built = root.join(format!("keycloak-{version}-built"));
    if is_built(&built) {
        return Ok(built);
    }
    let lock_path = root.join(".lock");
    let lock = std::fs::File::create(&lock_path).map_err(|e| fatal("lock file", e))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock_exclusive().map(|_| lock))
        .await
        .map_err(|e| fatal("lock", e))?
        .map_err(|e| fatal("lock", e))?;
    if is_built(&built) {
        return Ok(built);
    }
    let _ = std::fs::remove_dir_all(&built);
    // The first deploy on a machine waits here for half a minute or more: say what it waits
    // for, and how long each step took (the CLI shows these lines by default).
    let zip = root.join(format!("keycloak-quarkus-dist-{version}.zip"));
    if !zip.exists() {
        tracing::info!(%version, "Keycloak distribution: fetching it with Maven (once per machine)");
        let started = std::time::Instant::now();
        run(
            tokio::process::Command::new("mvn")
                .arg("-q")
                .arg("dependency:copy")
                .arg(format!(
                    "-Dartifact=org.keycloak:keycloak-quarkus-dist:{version}:zip"
                ))
                .arg(format!("-DoutputDirectory={}", root.display())),
            "mvn dependency:copy org.keycloak:keycloak-quarkus-dist",
        )
        .await?;
        let mb = std::fs::metadata(&zip).map_or(0, |m| m.len()) / 1_000_000;
        tracing::info!(
            "Keycloak distribution: fetched {mb} MB in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
    tracing::info!("Keycloak distribution: unpacking it");
    let started = std::time::Instant::now();
    let scratch = root.join(format!(".unpack-{version}"));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(|e| fatal("unpack dir", e))?;
    unpack(&zip, &scratch).await?;
    let unpacked = scratch.join(format!("keycloak-{version}"));
    let kc = unpacked.join("bin/kc.sh");
    if !kc.exists() {
        return Err(fatal(
            "unpack",
            format!("{} has no bin/kc.sh", zip.display()),
        ));
    }
    tracing::info!(
        "Keycloak distribution: unpacked in {:.1}s; building it (kc.sh build {})",
        started.elapsed().as_secs_f64(),
        BUILD_OPTIONS.join(" ")
    );
    let started = std::time::Instant::now();
    run(
        tokio::process::Command::new(&kc)
            .arg("build")
            .args(BUILD_OPTIONS),
        "kc.sh build",
    )
    .await?;
    std::fs::write(unpacked.join(".dive-built"), BUILD_OPTIONS.join(" "))
        .map_err(|e| fatal("marker", e))?;
    let _ = std::fs::remove_dir_all(&built);
    std::fs::rename(&unpacked, &built).map_err(|e| fatal("rename", e))?;
    let _ = std::fs::remove_dir_all(&scratch);
    drop(lock);
    tracing::info!(
        "Keycloak distribution: built in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(built)
}

/// Whether `built` holds a distribution built with today's [`BUILD_OPTIONS`] (its marker lists
/// them); one built with other options is built again.
fn is_built(built: &Path) -> bool {
    std::fs::read_to_string(built.join(".dive-built"))
        .is_ok_and(|options| options == BUILD_OPTIONS.join(" "))
}

/// Unzips with `unzip`, or with the JDK's `jar` where `unzip` is missing.
async fn unpack(zip: &Path, into: &Path) -> Result<(), DistError> {
    let have_unzip = tokio::process::Command::new("unzip")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if have_unzip {
        run(
            tokio::process::Command::new("unzip")
                .arg("-q")
                .arg(zip)
                .arg("-d")
                .arg(into),
            "unzip",
        )
        .await
    } else {
        run(
            tokio::process::Command::new("jar")
                .arg("xf")
                .arg(zip)
                .current_dir(into),
            "jar xf",
        )
        .await?;
        // `jar` does not keep the executable bits of the launch scripts.
        run(
            tokio::process::Command::new("sh")
                .arg("-c")
                .arg("chmod +x */bin/*.sh")
                .current_dir(into),
            "chmod",
        )
        .await
    }
}

async fn instance_copy(built: &Path, instance_dir: &Path) -> Result<PathBuf, DistError> {
    let target = instance_dir.join("keycloak");
    let marker = target.join(".dive-built");
    if std::fs::read_to_string(&marker).ok()
        == std::fs::read_to_string(built.join(".dive-built")).ok()
        && target.join("bin/kc.sh").exists()
    {
        return Ok(target);
    }
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir_all(target.parent().expect("instance dir"))
        .map_err(|e| fatal("instance dir", e))?;
    let linked = run(
        tokio::process::Command::new("cp")
            .arg("-al")
            .arg(built)
            .arg(&target),
        "cp -al",
    )
    .await;
    if linked.is_err() {
        let _ = std::fs::remove_dir_all(&target);
        run(
            tokio::process::Command::new("cp")
                .arg("-a")
                .arg(built)
                .arg(&target),
            "cp -a",
        )
        .await?;
    }
    Ok(target)
}
