//! Prometheus metrics, all prefixed `kiln_`, served at `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

/// Every metric the daemon keeps.
pub struct Metrics {
    registry: Registry,
    /// `kiln_builds_total{result}`: finished builds by result.
    pub builds: Family<ResultLabel, Counter>,
    /// `kiln_build_duration_seconds{result}`: from start to end of a build.
    pub build_duration: Family<ResultLabel, Histogram>,
    /// `kiln_queue_depth`: jobs waiting to run.
    pub queue_depth: Gauge,
    /// `kiln_builds_running`: builds running on this host.
    pub running: Gauge,
    /// `kiln_github_requests_total{status}`: GitHub API answers by HTTP status (`error`
    /// when none came).
    pub github_requests: Family<StatusLabel, Counter>,
    /// `kiln_github_rate_limit_remaining`: as GitHub last reported it.
    pub rate_limit_remaining: Gauge,
    /// `kiln_pushed_bytes_total`: blob bytes uploaded to registries.
    pub pushed_bytes: Counter,
    /// `kiln_webhook_deliveries_total{result}`: accepted, replayed, rejected, ignored.
    pub webhooks: Family<StatusLabel, Counter>,
    /// `kiln_commit_statuses_total{result}`: commit statuses sent (`sent`, `failed`).
    pub statuses: Family<ResultLabel, Counter>,
    /// `kiln_builds_unreproducible_total`: builds checked twice that differed.
    pub unreproducible: Counter,
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
        let github_requests = Family::<StatusLabel, Counter>::default();
        registry.register(
            "github_requests",
            "GitHub API requests, by HTTP status",
            github_requests.clone(),
        );
        let rate_limit_remaining = Gauge::default();
        rate_limit_remaining.set(-1);
        registry.register(
            "github_rate_limit_remaining",
            "GitHub's x-ratelimit-remaining as last seen (-1 until GitHub reported it)",
            rate_limit_remaining.clone(),
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
            "GitHub webhook deliveries, by what became of them",
            webhooks.clone(),
        );
        let statuses = Family::<ResultLabel, Counter>::default();
        registry.register(
            "commit_statuses",
            "Commit statuses sent to GitHub, by result",
            statuses.clone(),
        );
        let unreproducible = Counter::default();
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
            registry,
            unreproducible,
            verified,
            builds,
            build_duration,
            queue_depth,
            running,
            github_requests,
            rate_limit_remaining,
            pushed_bytes,
            webhooks,
            statuses,
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn label(s: &str) -> ResultLabel {
        ResultLabel {
            result: s.to_owned(),
        }
    }

    pub fn status(s: impl Into<String>) -> StatusLabel {
        StatusLabel { status: s.into() }
    }
}
