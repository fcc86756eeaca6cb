//! Build caches: directories of the container (`[build] cache = [...]`) kept between builds of
//! one repository on one host, as the engine's named volumes.
//!
//! - **Identity.** One cache per (repository, recipe path, builder content digest, path):
//!   [`CacheKey::id`]. A new builder image starts a new cache; repositories never share one.
//! - **Where.** A named volume of the engine (`kiln-cache-<scope>-<id>`), not a host directory:
//!   no host path enters the container, the files belong to the engine whatever uid the build
//!   wrote them as (so removing them needs no root), and a new volume is filled from the
//!   image's own directory when first mounted, so a first warm build sees exactly what a cold
//!   one sees.
//! - **Records.** `<dir>/<id>.json` (written atomically) says what the cache is, when it was
//!   last used, how big it was, and whether it is `saved` or `in-use`; `<dir>/<id>.lock` is
//!   held (flock) by the one build using it. A build that finds the lock taken runs without
//!   the cache (a cold build, as if on an empty scratch cache) and saves nothing.
//! - **Damage.** A cache is saved only when every step succeeded ([`Held::save`]). A failed,
//!   timed-out or cancelled build discards it; a build killed outright leaves its record
//!   `in-use` with the lock free, and the next build to take the lock discards it before use.
//!   A cache found to change a build's output is discarded too.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use super::{BuildError, Runner};

/// The label every cache volume carries: its id.
pub const LABEL_CACHE: &str = "dev.kiln.cache";
/// The label naming the cache directory (the host's state) a volume belongs to.
pub const LABEL_SCOPE: &str = "dev.kiln.cache.scope";

/// The default host budget: `[limits] cache = "20g"`.
pub const DEFAULT_BUDGET: u64 = 20 << 30;

/// What names a cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// The repository (the forge's name for it, or a work tree's remote or path).
    pub repo: String,
    /// The recipe's path in the repository.
    pub recipe: String,
    /// The builder's content digest.
    pub builder: String,
    /// The cached directory in the container.
    pub path: String,
}

impl CacheKey {
    /// `sha256:<hex>` of the key's canonical JSON: the cache's identity, recorded in
    /// provenance (never its content).
    pub fn id(&self) -> String {
        let v = serde_json::json!({
            "builder": self.builder,
            "path": self.path,
            "recipe": self.recipe,
            "repo": self.repo,
        });
        crate::Digest::of(&crate::json::to_canonical_vec(&v).unwrap_or_default()).to_string()
    }
}

/// A cache's state on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// A build holds it (or held it and died: then it is damaged).
    InUse,
    /// Left by a build whose steps all succeeded.
    Saved,
}

/// What `<dir>/<id>.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub volume: String,
    #[serde(flatten)]
    pub key: CacheKey,
    pub state: State,
    /// The build that last used it.
    pub build: String,
    /// Unix seconds.
    pub created: u64,
    pub last_used: u64,
    /// Bytes, as the engine last measured them.
    pub bytes: u64,
}

/// How a build used a cache: recorded in provenance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CacheUse {
    pub path: String,
    /// [`CacheKey::id`].
    pub id: String,
    /// Whether the build found what an earlier build saved.
    pub warm: bool,
    /// Whether the build ran on an empty scratch cache instead (another build held it).
    pub scratch: bool,
}

/// A cache mount for the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheMount {
    pub path: String,
    pub volume: String,
}

/// The cache metrics: `kiln_cache_bytes`, `kiln_cache_hits_total`,
/// `kiln_cache_evictions_total`.
#[derive(Clone, Debug, Default)]
pub struct CacheMetrics {
    pub bytes: Gauge,
    pub hits: Counter,
    pub evictions: Counter,
}

impl CacheMetrics {
    /// Registered once with the daemon's metrics.
    pub fn registered(m: &crate::metrics::Metrics) -> Arc<CacheMetrics> {
        m.part(|r| {
            let c = CacheMetrics::default();
            r.register(
                "cache_bytes",
                "Bytes held by this host's build caches, as last measured",
                c.bytes.clone(),
            );
            r.register(
                "cache_hits",
                "Cache mounts that found what an earlier build saved",
                c.hits.clone(),
            );
            r.register(
                "cache_evictions",
                "Caches removed to keep the host within its cache budget",
                c.evictions.clone(),
            );
            c
        })
    }
}

/// A host's build caches.
#[derive(Clone, Debug)]
pub struct Caches {
    dir: PathBuf,
    /// Volume names start with `kiln-cache-<scope>-`: one host state's caches, whatever else
    /// shares the engine.
    scope: String,
    budget: u64,
    metrics: Arc<CacheMetrics>,
}

/// Why a cache could not be used or kept.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("build cache: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("build cache: {0}")]
    Engine(#[from] BuildError),
}

impl CacheError {
    pub fn is_retryable(&self) -> bool {
        match self {
            CacheError::Io { source, .. } => crate::errors::io_retryable(source),
            CacheError::Engine(e) => e.is_retryable(),
        }
    }
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The source tree a build ran on: sha256 by path ([`crate::pack::tree_manifest`]).
pub type Manifest = BTreeMap<Vec<u8>, [u8; 32]>;

/// A cache one build holds: its lock, and whether it was warm.
pub struct Held {
    record: Record,
    path: PathBuf,
    _lock: File,
    pub warm: bool,
    /// The source tree of the build that saved it, where it was recorded.
    tree: Option<Box<Manifest>>,
}

impl Held {
    pub fn mount(&self) -> CacheMount {
        CacheMount {
            path: self.record.key.path.clone(),
            volume: self.record.volume.clone(),
        }
    }

    pub fn id(&self) -> &str {
        &self.record.id
    }
}

/// What a build gets for one cache path.
pub enum Taken {
    Held(Held),
    /// Another build holds it: this one runs without it and saves nothing.
    Busy {
        id: String,
        holder: String,
    },
}

/// A cache as `kiln cache list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub record: Record,
    /// A build holds it now.
    pub busy: bool,
}

impl Caches {
    /// The caches kept in `dir` (created if missing), within `budget` bytes in all.
    pub fn open(dir: &Path, budget: u64, metrics: Arc<CacheMetrics>) -> Result<Caches, CacheError> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let canonical = dir.canonicalize().map_err(io("resolve", dir))?;
        let scope =
            crate::Digest::of(canonical.as_os_str().as_encoded_bytes()).hex()[..8].to_owned();
        Ok(Caches {
            dir: canonical,
            scope,
            budget,
            metrics,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    fn hex(id: &str) -> &str {
        id.strip_prefix("sha256:").unwrap_or(id)
    }

    fn tree_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{}.tree", Self::hex(id)))
    }

    /// The source tree recorded with a saved cache: `[[path hex, sha256 hex], ...]`.
    fn read_tree(&self, id: &str) -> Option<Manifest> {
        let bytes = std::fs::read(self.tree_path(id)).ok()?;
        let pairs: Vec<(String, String)> = serde_json::from_slice(&bytes).ok()?;
        pairs
            .into_iter()
            .map(|(p, h)| {
                let h: [u8; 32] = hex::decode(h).ok()?.try_into().ok()?;
                Some((hex::decode(p).ok()?, h))
            })
            .collect()
    }

    fn write_tree(&self, id: &str, tree: &Manifest) -> Result<(), CacheError> {
        let path = self.tree_path(id);
        let pairs: Vec<(String, String)> = tree
            .iter()
            .map(|(p, h)| (hex::encode(p), hex::encode(h)))
            .collect();
        self.persist(&path, &pairs)
    }

    /// Write `value` as JSON to `path` atomically (a temporary file, synced, renamed).
    fn persist(&self, path: &Path, value: &impl Serialize) -> Result<(), CacheError> {
        let mut tmp =
            tempfile::NamedTempFile::new_in(&self.dir).map_err(io("create in", &self.dir))?;
        serde_json::to_writer(std::io::BufWriter::new(&mut tmp), value).map_err(|e| {
            CacheError::Io {
                op: "write",
                path: path.to_owned(),
                source: e.into(),
            }
        })?;
        tmp.as_file().sync_all().map_err(io("sync", path))?;
        tmp.persist(path).map_err(|e| CacheError::Io {
            op: "replace",
            path: path.to_owned(),
            source: e.error,
        })?;
        Ok(())
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{}.json", Self::hex(id)))
    }

    fn lock_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{}.lock", Self::hex(id)))
    }

    /// The cache's lock file, opened (created if missing; never removed, so every build
    /// locks the same file).
    fn lock_file(&self, id: &str) -> Result<(File, PathBuf), CacheError> {
        let path = self.lock_path(id);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        Ok((f, path))
    }

    fn volume_name(&self, id: &str) -> String {
        format!("kiln-cache-{}-{}", self.scope, &Self::hex(id)[..32])
    }

    fn read(&self, id: &str) -> Option<Record> {
        let text = std::fs::read(self.record_path(id)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn write(&self, r: &Record) -> Result<(), CacheError> {
        self.persist(&self.record_path(&r.id), r)
    }

    fn forget(&self, id: &str) {
        let path = self.record_path(id);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "a cache record could not be removed");
        }
    }

    /// Take the cache `key` for build `build`: held (warm if an earlier build saved it), or
    /// busy. A cache whose last holder died holding it is discarded first.
    pub async fn take(
        &self,
        runner: &dyn Runner,
        key: CacheKey,
        build: &str,
    ) -> Result<Taken, CacheError> {
        let id = key.id();
        let (lock, lock_path) = self.lock_file(&id)?;
        // `kiln cache list` and the budget look at locks for an instant: a few tries before
        // the cache counts as busy.
        let mut tries = 0;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if tries < 10 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = self.read(&id).map(|r| r.build).unwrap_or_default();
                    return Ok(Taken::Busy { id, holder });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", &lock_path)(e)),
            }
        }
        let volume = self.volume_name(&id);
        let old = self.read(&id);
        let warm = match &old {
            Some(r) if r.state == State::Saved => runner.has_volume(&volume).await?,
            Some(r) => {
                tracing::warn!(cache = %id, build = %r.build, "discarding a cache its last build left in use (it died)");
                runner.remove_volume(&volume).await?;
                false
            }
            None => {
                // Whatever a lost record left behind.
                runner.remove_volume(&volume).await?;
                false
            }
        };
        if !warm {
            runner
                .create_volume(
                    &volume,
                    BTreeMap::from([
                        (LABEL_CACHE.to_owned(), id.clone()),
                        (LABEL_SCOPE.to_owned(), self.scope.clone()),
                    ]),
                )
                .await?;
        } else {
            self.metrics.hits.inc();
        }
        let t = now();
        let record = Record {
            id: id.clone(),
            volume,
            key,
            state: State::InUse,
            build: build.to_owned(),
            created: old.as_ref().filter(|_| warm).map_or(t, |r| r.created),
            last_used: t,
            bytes: old.as_ref().filter(|_| warm).map_or(0, |r| r.bytes),
        };
        self.write(&record)?;
        let tree = if warm {
            self.read_tree(&id).map(Box::new)
        } else {
            None
        };
        Ok(Taken::Held(Held {
            path: self.record_path(&id),
            record,
            _lock: lock,
            warm,
            tree,
        }))
    }

    /// Keep what the build left in the cache for the next build; `bytes` as measured after
    /// its steps (the last measure where there is none); `tree`, the source it ran on.
    pub fn save(
        &self,
        mut held: Held,
        bytes: Option<u64>,
        tree: Option<&Manifest>,
    ) -> Result<(), CacheError> {
        match tree {
            Some(t) => self.write_tree(&held.record.id, t)?,
            None => {
                let _ = std::fs::remove_file(self.tree_path(&held.record.id));
            }
        }
        held.record.state = State::Saved;
        held.record.last_used = now();
        if let Some(b) = bytes {
            held.record.bytes = b;
        }
        self.write(&held.record)?;
        tracing::debug!(cache = %held.record.id, path = %held.path.display(), "cache saved");
        Ok(())
    }

    /// Remove the cache a build damaged (or that changed its output).
    pub async fn discard(&self, runner: &dyn Runner, held: Held) -> Result<(), CacheError> {
        self.forget(&held.record.id);
        let _ = std::fs::remove_file(self.tree_path(&held.record.id));
        runner.remove_volume(&held.record.volume).await?;
        drop(held);
        Ok(())
    }

    /// Every cache this host keeps, most recently used first.
    pub fn list(&self) -> Result<Vec<Listed>, CacheError> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(io("read", &self.dir))?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.strip_suffix(".json") else {
                continue;
            };
            let Some(record) = self.read(hex) else {
                continue;
            };
            let busy = File::open(self.lock_path(hex)).is_ok_and(|f| f.try_lock().is_err());
            out.push(Listed { record, busy });
        }
        out.sort_by(|a, b| {
            (b.record.last_used, &a.record.id).cmp(&(a.record.last_used, &b.record.id))
        });
        Ok(out)
    }

    /// Remove caches not in use that `pick` selects; returns what was removed.
    pub async fn prune(
        &self,
        runner: &dyn Runner,
        pick: impl Fn(&Record) -> bool,
    ) -> Result<Vec<Record>, CacheError> {
        let mut removed = Vec::new();
        for l in self.list()? {
            if !l.busy && pick(&l.record) && self.remove_idle(runner, &l.record).await? {
                removed.push(l.record);
            }
        }
        Ok(removed)
    }

    /// Remove a cache unless a build took it (or used it) since `r` was read.
    async fn remove_idle(&self, runner: &dyn Runner, r: &Record) -> Result<bool, CacheError> {
        let (lock, _) = self.lock_file(&r.id)?;
        if lock.try_lock().is_err() {
            return Ok(false);
        }
        match self.read(&r.id) {
            Some(now) if now.last_used == r.last_used && now.build == r.build => {}
            _ => return Ok(false),
        }
        // The lock file stays: removing it would let two builds lock two different files.
        self.forget(&r.id);
        let _ = std::fs::remove_file(self.tree_path(&r.id));
        runner.remove_volume(&r.volume).await?;
        Ok(true)
    }

    /// Evict the least recently used idle caches until the host is within its budget (by
    /// the sizes measured after each build). Returns the evicted.
    pub async fn enforce_budget(&self, runner: &dyn Runner) -> Result<Vec<Record>, CacheError> {
        let listed = self.list()?;
        let mut total: u64 = listed.iter().map(|l| l.record.bytes).sum();
        let mut evicted = Vec::new();
        // Oldest first.
        for l in listed.iter().rev() {
            if total <= self.budget {
                break;
            }
            if l.busy {
                continue;
            }
            if self.remove_idle(runner, &l.record).await? {
                total = total.saturating_sub(l.record.bytes);
                self.metrics.evictions.inc();
                tracing::info!(cache = %l.record.id, repo = %l.record.key.repo, path = %l.record.key.path, bytes = l.record.bytes, "evicted a build cache (least recently used) to keep within the host's budget");
                evicted.push(l.record.clone());
            }
        }
        self.metrics.bytes.set(total as i64);
        Ok(evicted)
    }

    /// The repositories this host holds saved caches for.
    pub fn warm_repos(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let hex = name.strip_suffix(".json")?.to_owned();
                self.read(&hex).filter(|r| r.state == State::Saved)
            })
            .map(|r| r.key.repo)
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

fn key_of(repo: &str, recipe: &str, builder: &str) -> CacheKey {
    CacheKey {
        repo: repo.to_owned(),
        recipe: recipe.to_owned(),
        builder: builder.to_owned(),
        path: String::new(),
    }
}

/// The caches of one build: each of its recipe's paths held, or busy.
#[derive(Default)]
pub struct Taking {
    slots: Vec<Slot>,
    /// The builder the caches were named for: the run uses this one, not whatever the
    /// reference points at by then.
    pub builder: Option<super::BuilderImage>,
}

enum Slot {
    Held(Held),
    Busy { path: String, id: String },
}

impl Caches {
    /// Take the caches of `paths` for build `build` of `repo`'s recipe `recipe` on the
    /// builder `builder`; `note` hears what the log should say about each.
    pub async fn take_all(
        &self,
        runner: &dyn Runner,
        (repo, recipe, builder): (&str, &str, &str),
        paths: &[String],
        build: &str,
        note: &mut (dyn FnMut(String) + Send),
    ) -> Result<Taking, CacheError> {
        let mut t = Taking::default();
        for path in paths {
            let key = CacheKey {
                path: path.clone(),
                ..key_of(repo, recipe, builder)
            };
            let id = key.id();
            match self.take(runner, key, build).await {
                Ok(Taken::Held(h)) => {
                    note(format!(
                        "kiln: cache {path}: {} ({})",
                        if h.warm { "warm" } else { "cold (new)" },
                        h.id()
                    ));
                    t.slots.push(Slot::Held(h));
                }
                Ok(Taken::Busy { id, holder }) => {
                    note(format!(
                        "kiln: cache {path} is in use by build {holder}: this build runs on an empty scratch cache and does not save it"
                    ));
                    t.slots.push(Slot::Busy {
                        path: path.clone(),
                        id,
                    });
                }
                // A cache that cannot be had (the engine refused its volume, say) is not worth
                // failing the build for: it runs cold, as without caches.
                Err(e) => {
                    note(format!(
                        "kiln: cache {path} is unavailable ({e}): this build runs without it"
                    ));
                    t.slots.push(Slot::Busy {
                        path: path.clone(),
                        id,
                    });
                }
            }
        }
        Ok(t)
    }
}

impl Taking {
    /// What the engine mounts: the held caches (a busy one is not mounted: the path holds
    /// what the image has there, as on an empty cache).
    pub fn mounts(&self) -> Vec<CacheMount> {
        self.slots
            .iter()
            .filter_map(|s| match s {
                Slot::Held(h) => Some(h.mount()),
                Slot::Busy { .. } => None,
            })
            .collect()
    }

    /// What provenance records.
    pub fn uses(&self) -> Vec<CacheUse> {
        self.slots
            .iter()
            .map(|s| match s {
                Slot::Held(h) => CacheUse {
                    path: h.record.key.path.clone(),
                    id: h.record.id.clone(),
                    warm: h.warm,
                    scratch: false,
                },
                Slot::Busy { path, id } => CacheUse {
                    path: path.clone(),
                    id: id.clone(),
                    warm: false,
                    scratch: true,
                },
            })
            .collect()
    }

    /// Whether any cache was mounted.
    pub fn mounted(&self) -> bool {
        self.slots.iter().any(|s| matches!(s, Slot::Held(_)))
    }

    /// The files of `tree` that are new or changed since a warm cache was saved (all of them
    /// where a warm cache recorded no tree); `None` where no cache is warm. A build stamps
    /// them newer than anything in the caches, so that tools deciding by mtime (make, cargo
    /// for a workspace's own crates) see them as changed: the source's mtimes are otherwise
    /// all the commit time, older than what an earlier build left.
    pub fn fresh(&self, tree: &Manifest) -> Option<std::collections::BTreeSet<Vec<u8>>> {
        let mut out = std::collections::BTreeSet::new();
        let mut any = false;
        for slot in &self.slots {
            let Slot::Held(h) = slot else { continue };
            if !h.warm {
                continue;
            }
            any = true;
            match &h.tree {
                Some(old) => out.extend(
                    tree.iter()
                        .filter(|(p, d)| old.get(p.as_slice()) != Some(*d))
                        .map(|(p, _)| p.clone()),
                ),
                None => out.extend(tree.keys().cloned()),
            }
        }
        any.then_some(out)
    }

    /// Whether any mounted cache held what an earlier build left.
    pub fn warm(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s, Slot::Held(h) if h.warm))
    }

    /// Save the held caches (`keep`, with the sizes measured after the steps, by path) or
    /// discard them. Failures are logged: a cache that cannot be saved is discarded by the
    /// next build that takes it.
    pub async fn release(
        self,
        caches: &Caches,
        runner: &dyn Runner,
        keep: bool,
        bytes: &BTreeMap<String, u64>,
        tree: Option<&Manifest>,
    ) {
        for slot in self.slots {
            let Slot::Held(h) = slot else { continue };
            let id = h.record.id.clone();
            let r = if keep {
                let b = bytes.get(&h.record.key.path).copied();
                caches.save(h, b, tree)
            } else {
                caches.discard(runner, h).await
            };
            if let Err(e) = r {
                tracing::warn!(cache = %id, error = %e, "a build cache could not be {}", if keep { "saved" } else { "discarded" });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_changes_with_each_part_of_the_key() {
        let k = CacheKey {
            repo: "acme/app".into(),
            recipe: "kiln.toml".into(),
            builder: "sha256:aa".into(),
            path: "/root/.cargo".into(),
        };
        let id = k.id();
        assert!(id.starts_with("sha256:"), "{id}");
        for changed in [
            CacheKey {
                repo: "acme/other".into(),
                ..k.clone()
            },
            CacheKey {
                recipe: "sub/kiln.toml".into(),
                ..k.clone()
            },
            CacheKey {
                builder: "sha256:bb".into(),
                ..k.clone()
            },
            CacheKey {
                path: "/src/target".into(),
                ..k.clone()
            },
        ] {
            assert_ne!(changed.id(), id, "{changed:?}");
        }
        assert_eq!(k.clone().id(), id);
    }
}
