//! The metrics of SPEC.md §7, with Spegel's names and labels.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use speil_core::advertise::AdvertisedCounts;

/// Labels `{registry, cache}` of `spegel_mirror_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    /// The upstream registry (the request's `ns`, empty when it had none).
    pub registry: String,
    /// `hit` (a peer answered) or `miss`.
    pub cache: String,
}

/// Label `{registry}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabel {
    /// The registry.
    pub registry: String,
}

/// Label `{router}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouterLabel {
    /// The router's name (`libp2p`).
    pub router: String,
}

/// Labels `{handler, method, code}` of the HTTP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route (`blobs`, `manifests`, `v2`, `readyz`, `livez`, `other`).
    pub handler: String,
    /// The method.
    pub method: String,
    /// The status code.
    pub code: String,
}

/// Label `{handler}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabel {
    /// The route.
    pub handler: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(100.0, 10.0, 8))
}

fn resolve_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// Every metric speil exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// `spegel_mirror_requests_total{registry,cache}`.
    pub mirror_requests: Family<MirrorLabels, Counter>,
    /// `spegel_mirror_last_success_timestamp_seconds`.
    pub mirror_last_success: Gauge<f64, AtomicU64>,
    /// `spegel_resolve_duration_seconds{router}`.
    pub resolve_duration: HistogramFamily<RouterLabel>,
    /// `spegel_advertised_image_tags{registry}`.
    pub advertised_tags: Family<RegistryLabel, Gauge>,
    /// `spegel_advertised_image_digests{registry}`.
    pub advertised_image_digests: Family<RegistryLabel, Gauge>,
    /// `spegel_advertised_content_digests{registry}`.
    pub advertised_content_digests: Family<RegistryLabel, Gauge>,
    /// `http_request_duration_seconds{handler,method,code}`.
    pub http_duration: HistogramFamily<HttpLabels>,
    /// `http_response_size_bytes{handler,method,code}`.
    pub http_size: HistogramFamily<HttpLabels>,
    /// `http_requests_inflight{handler}`.
    pub http_inflight: Family<HandlerLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(Registry::default())
    }
}

impl Metrics {
    /// Registers speil's metrics in `registry` (which may hold others, e.g. process metrics).
    pub fn new(mut registry: Registry) -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            mirror_requests: Family::default(),
            mirror_last_success: Gauge::default(),
            resolve_duration: Family::new_with_constructor(resolve_histogram),
            advertised_tags: Family::default(),
            advertised_image_digests: Family::default(),
            advertised_content_digests: Family::default(),
            http_duration: Family::new_with_constructor(duration_histogram),
            http_size: Family::new_with_constructor(size_histogram),
            http_inflight: Family::default(),
        };
        // prometheus-client appends `_total` to counters itself.
        registry.register(
            "spegel_mirror_requests",
            "Total number of mirror requests",
            m.mirror_requests.clone(),
        );
        registry.register(
            "spegel_mirror_last_success_timestamp_seconds",
            "The timestamp of the last mirror request that succeeded",
            m.mirror_last_success.clone(),
        );
        registry.register(
            "spegel_resolve_duration_seconds",
            "The duration for the router to resolve a peer",
            m.resolve_duration.clone(),
        );
        registry.register(
            "spegel_advertised_image_tags",
            "Number of image tags advertised to be available",
            m.advertised_tags.clone(),
        );
        registry.register(
            "spegel_advertised_image_digests",
            "Number of image digests advertised to be available",
            m.advertised_image_digests.clone(),
        );
        registry.register(
            "spegel_advertised_content_digests",
            "Number of content digests advertised to be available",
            m.advertised_content_digests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "The latency of the HTTP requests",
            m.http_duration.clone(),
        );
        registry.register(
            "http_response_size_bytes",
            "The size of the HTTP responses",
            m.http_size.clone(),
        );
        registry.register(
            "http_requests_inflight",
            "The number of inflight requests being handled at the same time",
            m.http_inflight.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text encoding of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a mirrored request of `registry` as a hit or a miss.
    pub fn mirror_request(&self, registry: &str, hit: bool) {
        self.mirror_requests
            .get_or_create(&MirrorLabels {
                registry: registry.to_owned(),
                cache: if hit { "hit" } else { "miss" }.to_owned(),
            })
            .inc();
    }

    /// Records a mirrored response that reached its end at `at`.
    pub fn mirror_success(&self, at: SystemTime) {
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64();
        self.mirror_last_success.set(secs);
    }

    /// Replaces the advertised-count gauges with `counts`.
    pub fn set_advertised(&self, counts: &BTreeMap<String, AdvertisedCounts>) {
        let families = [
            &self.advertised_tags,
            &self.advertised_image_digests,
            &self.advertised_content_digests,
        ];
        for f in families {
            f.clear();
        }
        for (registry, c) in counts {
            let label = RegistryLabel {
                registry: registry.clone(),
            };
            self.advertised_tags
                .get_or_create(&label)
                .set(gauge(c.image_tags));
            self.advertised_image_digests
                .get_or_create(&label)
                .set(gauge(c.image_digests));
            self.advertised_content_digests
                .get_or_create(&label)
                .set(gauge(c.content_digests));
        }
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
