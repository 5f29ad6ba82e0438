//! The metrics of SPEC.md §7, with Spegel's names and labels.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use speil_core::advertise::AdvertisedCounts;
use speil_core::filter::{RegistryFilter, RegistryLabels};

/// Labels `{registry, cache}` of `spegel_mirror_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    /// The upstream registry: the request's `ns` as [`RegistryLabels`] bounds it (a mirrored
    /// registry's name, `other`, or empty when it had none).
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
    /// The route, as Spegel names it (`/v2/*`, `/readyz`, `/livez`; `other` for no route).
    pub handler: String,
    /// The method: `GET`, `HEAD` or `other` ([`method_label`]).
    pub method: String,
    /// The status code speil sent (it never passes on one a client or a peer chose: the core
    /// relays a peer's 200, 206 or 416 only), or `aborted`.
    pub code: String,
}

impl HttpLabels {
    /// The labels of a response to `method` on `handler` (a fixed route name), with `status`
    /// (`None`: aborted before a status).
    pub fn new(handler: &str, method: &http::Method, status: Option<http::StatusCode>) -> Self {
        HttpLabels {
            handler: handler.to_owned(),
            method: method_label(method).to_owned(),
            code: status
                .as_ref()
                .map_or("aborted", http::StatusCode::as_str)
                .to_owned(),
        }
    }
}

/// The `method` label: the registry API's methods (`GET`, `HEAD`, as Spegel reports them)
/// keep their name, every other method (a client may send any token) is `other`.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        _ => "other",
    }
}

/// Label `{handler}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabel {
    /// The route.
    pub handler: String,
}

/// Label `{reason}` of `speil_not_found_total` (a [`speil_core::FailReason`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason.
    pub reason: String,
}

/// Label `{source}` of `speil_served_bytes_total`: `local` or `peer`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// Where the bytes came from.
    pub source: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Prometheus' default buckets (Go client `prometheus.DefBuckets`), which Spegel's
/// `http_request_duration_seconds` and `spegel_resolve_duration_seconds` use.
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

/// Spegel's response size buckets: 1 KiB times powers of 5, up to about 2 GB.
fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1024.0, 5.0, 10))
}

fn resolve_histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

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
    /// `speil_not_found_total{reason}` (speil's own).
    pub not_found: Family<ReasonLabel, Counter>,
    /// `speil_served_bytes_total{source}` (speil's own).
    pub served_bytes: Family<SourceLabel, Counter>,
    /// `speil_peer_resumes_total` (speil's own).
    pub peer_resumes: Counter,
    /// `speil_body_mismatches_total` (speil's own).
    pub body_mismatches: Counter,
    /// `speil_peer_answers_rejected_total{reason}` (speil's own).
    pub peer_answers_rejected: Family<ReasonLabel, Counter>,
    /// `speil_peers` (speil's own), set when the metrics are read.
    pub peers: Gauge,
    /// `speil_dht_records` (speil's own), set when the metrics are read.
    pub dht_records: Gauge,
    /// The registries `spegel_mirror_requests_total` names.
    registry_labels: Mutex<RegistryLabels>,
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
            not_found: Family::default(),
            served_bytes: Family::default(),
            peer_resumes: Counter::default(),
            body_mismatches: Counter::default(),
            peer_answers_rejected: Family::default(),
            peers: Gauge::default(),
            dht_records: Gauge::default(),
            registry_labels: Mutex::default(),
        };
        // prometheus-client appends `_total` to counters itself.
        registry.register(
            "spegel_mirror_requests",
            "Total number of mirror requests",
            m.mirror_requests.clone(),
        );
        registry.register(
            "spegel_mirror_last_success_timestamp_seconds",
            "The timestamp of the last successful mirror request",
            m.mirror_last_success.clone(),
        );
        registry.register(
            "spegel_resolve_duration_seconds",
            "The duration for router to resolve a peer",
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
        registry.register(
            "speil_not_found",
            "Content requests answered 404, by why (not_mirrored, filtered, not_present, no_peer, all_attempts_failed)",
            m.not_found.clone(),
        );
        registry.register(
            "speil_served_bytes",
            "Body bytes of successful content responses, by where they came from (local, peer)",
            m.served_bytes.clone(),
        );
        registry.register(
            "speil_peer_resumes",
            "Relayed responses continued from another peer after the first one stopped",
            m.peer_resumes.clone(),
        );
        registry.register(
            "speil_body_mismatches",
            "Relayed bodies that did not hash to their digest (each aborted before its last byte)",
            m.body_mismatches.clone(),
        );
        registry.register(
            "speil_peer_answers_rejected",
            "Peer answers not relayed, by reason (the peer is not asked again for that request)",
            m.peer_answers_rejected.clone(),
        );
        registry.register(
            "speil_peers",
            "Peers this node's router knows",
            m.peers.clone(),
        );
        registry.register(
            "speil_dht_records",
            "Provider records of other peers this node's DHT store holds",
            m.dht_records.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text encoding of every metric.
    ///
    /// This is the format Spegel serves (Prometheus text 0.0.4, as the Go client writes it, see
    /// [`PROMETHEUS_TEXT`]): counters are named with `_total` in `# HELP` and `# TYPE`, numbers
    /// are formatted as Go's `strconv.FormatFloat(v, 'g', -1, 64)` (`le="1"`, `1.6e+07`), and
    /// there is no `# EOF`, so a query on `le` matches Spegel's series on any Prometheus.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        openmetrics_to_prometheus_text(&out)
    }

    /// Counts a 404 answer by its reason.
    pub fn not_found(&self, reason: speil_core::FailReason) {
        self.not_found
            .get_or_create(&ReasonLabel {
                reason: reason.as_str().to_owned(),
            })
            .inc();
    }

    /// Counts a peer answer that was not relayed, by its fixed reason label.
    pub fn peer_answer_rejected(&self, reason: &'static str) {
        self.peer_answers_rejected
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a relayed body that did not hash to its digest.
    pub fn body_mismatch(&self) {
        self.body_mismatches.inc();
    }

    /// Counts `bytes` of a successful content response served from `source`.
    pub fn served(&self, source: &str, bytes: u64) {
        self.served_bytes
            .get_or_create(&SourceLabel {
                source: source.to_owned(),
            })
            .inc_by(bytes);
    }

    /// Counts a mirrored request for the registry `ns` as a hit or a miss, under the label
    /// the core's [`RegistryLabels`] gives it (`held`: whether this node holds images of a
    /// registry).
    pub fn mirror_request(
        &self,
        filter: &RegistryFilter,
        ns: Option<&str>,
        held: impl FnOnce(&str) -> bool,
        hit: bool,
    ) {
        let registry = self
            .registry_labels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .label(filter, ns, held)
            .to_owned();
        self.mirror_requests
            .get_or_create(&MirrorLabels {
                registry,
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

/// Rewrites prometheus-client's OpenMetrics text as the Prometheus text format 0.0.4.
fn openmetrics_to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<(&str, &str)> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with('#') {
            // `# UNIT` and `# EOF` do not exist in the 0.0.4 format.
        } else if !line.is_empty() {
            out.push_str(&sample_line(line));
            out.push('\n');
        }
    }
    out
}

/// One sample line with its value and any `le` label in Go's number format.
fn sample_line(line: &str) -> String {
    let (series, value) = match line.rfind('}') {
        Some(end) => (&line[..=end], line[end + 1..].trim()),
        None => line.split_once(' ').unwrap_or((line, "")),
    };
    // Go writes `le` last and as a Go number; prometheus-client writes it first.
    let series = match series.find("le=\"") {
        Some(i) => {
            let start = i + 4;
            let len = series[start..].find('"').unwrap_or(0);
            let le = go_number(&series[start..start + len]);
            let before = series[..i].trim_end_matches(',');
            let after = series[start + len + 1..].trim_start_matches(',');
            let others = format!("{before}{after}");
            let others = others.trim_end_matches('}');
            let sep = if others.ends_with('{') { "" } else { "," };
            format!("{others}{sep}le=\"{le}\"}}")
        }
        None => series.to_owned(),
    };
    format!("{series} {}", go_number(value))
}

/// `v` (a number as prometheus-client writes it) as Go's `FormatFloat(v, 'g', -1, 64)`.
fn go_number(v: &str) -> String {
    let Ok(f) = v.parse::<f64>() else {
        return v.to_owned();
    };
    if f.is_nan() {
        return "NaN".to_owned();
    }
    if f.is_infinite() {
        return if f > 0.0 { "+Inf" } else { "-Inf" }.to_owned();
    }
    // Shortest digits, as Rust's `{:e}` gives them: `3.2e6`, `5e-5`, `0e0`.
    let e = format!("{f:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    // Go switches to the exponent form outside [1e-4, 1e6) when printing the shortest digits.
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_as_go_writes_them() {
        for (v, go) in [
            ("0", "0"),
            ("1.0", "1"),
            ("0.005", "0.005"),
            ("2.5", "2.5"),
            ("1024.0", "1024"),
            ("640000.0", "640000"),
            ("3200000.0", "3.2e+06"),
            ("2000000000.0", "2e+09"),
            ("1796215951.12", "1.79621595112e+09"),
            ("0.00005", "5e-05"),
            ("0.0001", "0.0001"),
            ("-3.0", "-3"),
            ("+Inf", "+Inf"),
            ("NaN", "NaN"),
            ("17", "17"),
        ] {
            assert_eq!(go_number(v), go, "{v}");
        }
    }

    #[test]
    fn labels_are_bounded() {
        for (m, want) in [
            ("GET", "GET"),
            ("HEAD", "HEAD"),
            ("POST", "other"),
            ("get", "other"),
            ("FOO123", "other"),
        ] {
            let m = http::Method::from_bytes(m.as_bytes()).unwrap();
            assert_eq!(method_label(&m), want);
        }
        let l = HttpLabels::new("other", &http::Method::PUT, None);
        assert_eq!((l.method.as_str(), l.code.as_str()), ("other", "aborted"));
        let m = Metrics::default();
        let listed = RegistryFilter::new(&["docker.io"], &[]).unwrap();
        m.mirror_request(&listed, Some("docker.io"), |_| false, false);
        m.mirror_request(&listed, Some("x.test"), |_| true, false);
        let text = m.encode();
        assert!(
            text.contains(r#"{registry="docker.io",cache="miss"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"{registry="other",cache="miss"} 1"#),
            "{text}"
        );
        assert!(!text.contains("x.test"), "{text}");
    }

    #[test]
    fn prometheus_text_as_spegel_serves_it() {
        let m = Metrics::default();
        m.mirror_request(
            &RegistryFilter::default(),
            Some("docker.io"),
            |_| false,
            true,
        );
        m.http_size
            .get_or_create(&HttpLabels::new(
                "/v2/*",
                &http::Method::GET,
                Some(http::StatusCode::OK),
            ))
            .observe(2048.0);
        let text = m.encode();
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains(
                "# HELP spegel_mirror_requests_total Total number of mirror requests.\n\
                 # TYPE spegel_mirror_requests_total counter\n\
                 spegel_mirror_requests_total{registry=\"docker.io\",cache=\"hit\"} 1\n"
            ),
            "{text}"
        );
        for bucket in [
            r#"http_response_size_bytes_bucket{handler="/v2/*",method="GET",code="200",le="1024"} 0"#,
            r#"http_response_size_bytes_bucket{handler="/v2/*",method="GET",code="200",le="5120"} 1"#,
            r#"http_response_size_bytes_bucket{handler="/v2/*",method="GET",code="200",le="1.6e+07"} 1"#,
            r#"http_response_size_bytes_bucket{handler="/v2/*",method="GET",code="200",le="2e+09"} 1"#,
            r#"http_response_size_bytes_bucket{handler="/v2/*",method="GET",code="200",le="+Inf"} 1"#,
            r#"http_response_size_bytes_sum{handler="/v2/*",method="GET",code="200"} 2048"#,
        ] {
            assert!(text.contains(bucket), "{bucket} in {text}");
        }
    }
}
