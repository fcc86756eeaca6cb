//! Prometheus metrics, all prefixed `kiln_`, served at `GET /metrics`. The daemon's own are
//! here; a part with metrics of its own (a forge's API requests) registers them through
//! [`Metrics::part`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
pub use prometheus_client::registry::{Registry, Unit};

use crate::sync::lock;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    pub cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

/// Every metric the daemon keeps.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// The metrics parts registered for themselves, by their type.
    parts: Mutex<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>,
    /// `kiln_builds_total{result}`: finished builds by result.
    pub builds: Family<ResultLabel, Counter>,
    /// `kiln_build_duration_seconds{result}`: from start to end of a build.
    pub build_duration: Family<ResultLabel, Histogram>,
    /// `kiln_queue_depth`: jobs waiting to run.
    pub queue_depth: Gauge,
    /// `kiln_builds_running`: builds running on this host.
    pub running: Gauge,
    /// `kiln_pushed_bytes_total`: blob bytes uploaded to registries.
    pub pushed_bytes: Counter,
    /// `kiln_webhook_deliveries_total{result}`: accepted, replayed, rejected, ignored.
    pub webhooks: Family<StatusLabel, Counter>,
    /// `kiln_commit_statuses_total{result}`: commit statuses sent (`sent`, `failed`).
    pub statuses: Family<ResultLabel, Counter>,
    /// `kiln_builds_unreproducible_total{cause}`: builds checked twice that differed:
    /// `build` (two cold builds), `cache` (a build with caches and its cold rebuild).
    pub unreproducible: Family<CauseLabel, Counter>,
    /// `kiln_builds_verified_total`: builds checked twice that were identical.
    pub verified: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kiln");
        let builds = Family::<ResultLabel, Counter>::default();
        registry.register("builds", "Finished builds, by result", builds.clone());
        let build_duration = Family::<ResultLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 14))
        });
        registry.register_with_unit(
            "build_duration",
            "Build duration, from claim to result",
            Unit::Seconds,
            build_duration.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register("queue_depth", "Jobs waiting to run", queue_depth.clone());
        let running = Gauge::default();
        registry.register(
            "builds_running",
            "Builds running on this host",
            running.clone(),
        );
        let pushed_bytes = Counter::default();
        registry.register(
            "pushed_bytes",
            "Blob bytes uploaded to registries",
            pushed_bytes.clone(),
        );
        let webhooks = Family::<StatusLabel, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries, by what became of them",
            webhooks.clone(),
        );
        let statuses = Family::<ResultLabel, Counter>::default();
        registry.register(
            "commit_statuses",
            "Commit statuses sent to forges, by result",
            statuses.clone(),
        );
        let unreproducible = Family::<CauseLabel, Counter>::default();
        // Both causes are shown from the start, at 0.
        for cause in ["build", "cache"] {
            let _ = unreproducible.get_or_create(&Metrics::cause(cause));
        }
        registry.register(
            "builds_unreproducible",
            "Builds built twice to check them that came out different",
            unreproducible.clone(),
        );
        let verified = Counter::default();
        registry.register(
            "builds_verified",
            "Builds built twice to check them that came out identical",
            verified.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            parts: Mutex::new(HashMap::new()),
            unreproducible,
            verified,
            builds,
            build_duration,
            queue_depth,
            running,
            pushed_bytes,
            webhooks,
            statuses,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &lock(&self.registry));
        out
    }

    /// A part's own metrics: registered by `register` the first time they are asked for,
    /// shared after (a part made anew, say on a config reload, keeps counting in them).
    pub fn part<T: Any + Send + Sync>(&self, register: impl FnOnce(&mut Registry) -> T) -> Arc<T> {
        let mut parts = lock(&self.parts);
        if let Some(p) = parts.get(&TypeId::of::<T>())
            && let Ok(p) = p.clone().downcast::<T>()
        {
            return p;
        }
        let p = Arc::new(register(&mut lock(&self.registry)));
        parts.insert(TypeId::of::<T>(), p.clone());
        p
    }

    pub fn label(s: &str) -> ResultLabel {
        ResultLabel {
            result: s.to_owned(),
        }
    }

    pub fn cause(s: &str) -> CauseLabel {
        CauseLabel {
            cause: s.to_owned(),
        }
    }

    pub fn status(s: impl Into<String>) -> StatusLabel {
        StatusLabel { status: s.into() }
    }
}
