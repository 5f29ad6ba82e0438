//! Metric labels are bounded sets (SPEC.md §8): a few hundred requests over loopback HTTP with
//! client-chosen `ns` values, method tokens and paths add a constant number of lines to
//! `/metrics`, known values keep their names, and unknown ones appear only as `other`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use futures::StreamExt;
use http::{Method, StatusCode};
use speil_core::Digest;
use speil_core::filter::RegistryFilter;
use speil_core::node::NodeConfig;
use speil_driver::tokio::Tokio;
use speil_http::debug::{DebugConfig, MetricsService};
use speil_http::server::ServerConfig;
use tokio::task::JoinHandle;

/// Requests with client-chosen values, sent in two halves of this many.
const HALF: usize = 150;

/// Lines of one `{handler, method, code}` combination: both histograms' buckets, sums and
/// counts (12 + 2 and 11 + 2).
const LINES_PER_HTTP_SERIES: usize = 27;

/// Registries outside the mirrored list that keep their name when every registry is mirrored
/// (`speil_core::filter::RegistryLabels::MAX_NAMED`).
const MAX_NAMED: usize = 16;

/// What the first half may add: a few new `{handler, method, code}` combinations (`other`
/// methods and paths) and the registries the cap lets keep their name, two lines each.
const MAX_GROWTH: usize = 6 * LINES_PER_HTTP_SERIES + 2 * (MAX_NAMED + 2);

/// The whole `/metrics` text after both halves stays under this many lines (about 300 here;
/// with client-chosen label values it was over 4,000).
const MAX_LINES: usize = 500;

/// Deterministic pseudo-random tokens (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `prefix` then 6 to 9 characters of `alphabet`.
    fn token(&mut self, prefix: &str, alphabet: &[u8]) -> String {
        let len = 6 + (self.next() % 4) as usize;
        let mut s = prefix.to_owned();
        for _ in 0..len {
            s.push(alphabet[(self.next() % alphabet.len() as u64) as usize] as char);
        }
        s
    }
}

const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const MIXED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Node `a` (under test) and node `b`, which holds a blob of `docker.io/library/app`.
struct Fixture {
    a: TestNode,
    _b: TestNode,
    metrics: SocketAddr,
    blob: Digest,
    _task: JoinHandle<()>,
}

async fn fixture(net: u8, tune: impl FnOnce(&mut NodeConfig<u32>)) -> Fixture {
    let dht = Arc::new(FakeDht::default());
    let mut ls = listeners(net, 3).await;
    let metrics_listener = ls.pop().unwrap();
    let metrics = metrics_listener.local_addr().unwrap();
    let sb = Arc::new(FakeContentStore::default());
    let blob = sb.put(blob_bytes(20_000, 5));
    sb.tag("docker.io/library/app:v1", &blob);
    let b = start_node(2, ls.pop().unwrap(), dht.clone(), sb, no_auth()).await;
    // `a` holds an image of registry.k8s.io (a registry it advertises).
    let sa = Arc::new(FakeContentStore::default());
    let own = sa.put(blob_bytes(1_000, 6));
    sa.tag("registry.k8s.io/pause:3.10", &own);
    let a = start_node_with(
        1,
        ls.pop().unwrap(),
        dht.clone(),
        sa.clone(),
        no_auth(),
        tune,
    )
    .await;
    let service = MetricsService::new(
        a.handle.shared().clone(),
        sa,
        Tokio,
        DebugConfig {
            enabled: true,
            peer_id: "12D3KooWTest".into(),
            registry: a.addr,
            credentials: None,
        },
    );
    let task = tokio::spawn(async move {
        let _ = speil_http::Server::new(Tokio)
            .serve(metrics_listener, service)
            .await;
    });
    let key = speil_core::Key::digest(&blob);
    eventually(|| dht.providers(&key).contains(&2)).await;
    eventually(|| a.handle.shared().store_connected()).await;
    Fixture {
        a,
        _b: b,
        metrics,
        blob,
        _task: task,
    }
}

fn no_auth() -> ServerConfig {
    ServerConfig { credentials: None }
}

async fn metrics_text(addr: SocketAddr) -> String {
    let g = get(addr, "/metrics").await;
    assert_eq!(g.status, StatusCode::OK);
    String::from_utf8(g.bytes().to_vec()).unwrap()
}

/// The samples of `/metrics`: metric name and labels.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let series = l.rsplit_once(' ').map_or(l, |(s, _)| s);
            let Some((name, rest)) = series.split_once('{') else {
                return (series.to_owned(), BTreeMap::new());
            };
            let labels = rest
                .trim_end_matches('}')
                .split("\",")
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                .collect();
            (name.to_owned(), labels)
        })
        .collect()
}

/// Every value of label `label` in `text`.
fn values(text: &str, label: &str) -> BTreeSet<String> {
    samples(text)
        .into_iter()
        .filter_map(|(_, mut l)| l.remove(label))
        .collect()
}

/// Known traffic: a hit (GET and HEAD) and a miss of docker.io, a miss of registry.k8s.io,
/// `/v2/`, the probes.
async fn known_traffic(f: &Fixture) {
    let a = f.a.addr;
    let blob = format!("/v2/library/app/blobs/{}?ns=docker.io", f.blob);
    assert_eq!(get(a, &blob).await.status, StatusCode::OK);
    let h = request(a, Method::HEAD, &blob, &[]).await.unwrap();
    assert_eq!(h.status, StatusCode::OK);
    let missing = "/v2/library/nobody/manifests/v1?ns=docker.io";
    assert_eq!(get(a, missing).await.status, StatusCode::NOT_FOUND);
    let missing = "/v2/nobody/manifests/v1?ns=registry.k8s.io";
    assert_eq!(get(a, missing).await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(a, "/v2/").await.status, StatusCode::OK);
    let h = request(a, Method::HEAD, "/v2/", &[]).await.unwrap();
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(get(a, "/livez").await.status, StatusCode::OK);
    assert_eq!(get(a, "/readyz").await.status, StatusCode::OK);
}

/// `n` requests with client-chosen values, every kind in turn; returns every token used.
async fn flood(f: &Fixture, rng: &mut Rng, n: usize) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut reqs = Vec::new();
    for i in 0..n {
        let ns = rng.token("ns", LOWER) + ".test";
        let name = rng.token("n", LOWER);
        let method = Method::from_bytes(rng.token("M", MIXED).as_bytes()).unwrap();
        let (method, path) = match i % 6 {
            // A tag of a random registry: mirrored (a miss) when every registry is.
            0 => (Method::GET, format!("/v2/{name}/manifests/v1?ns={ns}")),
            // A blob a peer has, under a random registry: a hit when every registry is.
            1 => (Method::GET, format!("/v2/app/blobs/{}?ns={ns}", f.blob)),
            2 => (Method::HEAD, format!("/v2/{name}/manifests/v1?ns={ns}")),
            // A random method on a registry route, on a probe, and on a random path.
            3 => (method, format!("/v2/{name}/manifests/v1?ns={ns}")),
            4 => (method, "/readyz".to_owned()),
            _ => (method, format!("/{name}/{}", rng.token("p", LOWER))),
        };
        tokens.extend([ns, name, method.as_str().to_owned()]);
        reqs.push((method, path));
    }
    let a = f.a.addr;
    let statuses: Vec<StatusCode> = futures::stream::iter(reqs)
        .map(|(m, p)| async move { request(a, m, &p, &[]).await.unwrap().status })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| !s.is_server_error()),
        "{statuses:?}"
    );
    tokens.retain(|t| t != "GET" && t != "HEAD");
    tokens
}

/// The checks common to both configurations; returns the final `/metrics` text.
async fn flood_adds_constant_lines(f: &Fixture, seed: u64) -> (String, Vec<String>) {
    known_traffic(f).await;
    let before = metrics_text(f.metrics).await;
    let mut rng = Rng(seed);
    let first = flood(f, &mut rng, HALF).await;
    let middle = metrics_text(f.metrics).await;
    let second = flood(f, &mut rng, HALF).await;
    let after = metrics_text(f.metrics).await;
    let (l0, l1, l2) = (
        before.lines().count(),
        middle.lines().count(),
        after.lines().count(),
    );
    eprintln!(
        "/metrics lines: {l0} before, {l1} after {HALF} requests, {l2} after {}",
        2 * HALF
    );

    // The second half adds (almost) nothing: every combination of bounded values already
    // exists. A loaded machine may add a status once (an aborted response): two at most.
    assert!(
        l2 <= l1 + 2 * LINES_PER_HTTP_SERIES,
        "{l1} -> {l2} lines\n{after}"
    );
    assert!(l1 <= l0 + MAX_GROWTH, "{l0} -> {l1} lines\n{middle}");
    assert!(l2 <= MAX_LINES, "{l2} lines\n{after}");

    // No method token or path of the second half appears anywhere; of the first half, only
    // the registry names allowed by the cap.
    for t in &second {
        assert!(!after.contains(t.as_str()), "{t} in\n{after}");
    }
    let registries = values(&after, "registry");
    for t in &first {
        if !t.ends_with(".test") {
            assert!(!after.contains(t.as_str()), "{t} in\n{after}");
        }
    }

    // Bounded sets.
    let methods = values(&after, "method");
    assert_eq!(
        methods,
        ["GET", "HEAD", "other"].map(String::from).into(),
        "{after}"
    );
    let handlers = values(&after, "handler");
    let allowed: BTreeSet<String> = ["/v2/*", "/readyz", "/livez", "other"]
        .map(String::from)
        .into();
    assert!(handlers.is_subset(&allowed), "{handlers:?}");
    for code in values(&after, "code") {
        assert!(
            code == "aborted" || (code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit())),
            "{code}"
        );
    }
    for (name, want) in [
        ("cache", &["hit", "miss"][..]),
        ("source", &["local", "peer"]),
    ] {
        let got = values(&after, name);
        let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
        assert!(got.is_subset(&want), "{name}: {got:?}");
    }
    assert!(registries.len() <= MAX_NAMED + 4, "{registries:?}");

    // Known values as before.
    for want in [
        r#"http_request_duration_seconds_count{handler="/v2/*",method="GET",code="200"}"#,
        r#"http_request_duration_seconds_count{handler="/v2/*",method="HEAD",code="200"}"#,
        r#"http_response_size_bytes_count{handler="/readyz",method="GET",code="200"}"#,
        r#"spegel_mirror_requests_total{registry="docker.io",cache="hit"}"#,
        r#"spegel_mirror_requests_total{registry="docker.io",cache="miss"}"#,
        r#"spegel_mirror_requests_total{registry="registry.k8s.io",cache="miss"}"#,
        // Unknown methods and paths, as `other`.
        r#"http_request_duration_seconds_count{handler="/v2/*",method="other","#,
        r#"http_request_duration_seconds_count{handler="/readyz",method="other","#,
        r#"http_request_duration_seconds_count{handler="other",method="other","#,
    ] {
        assert!(after.contains(want), "{want} not in\n{after}");
    }
    (after, first)
}

/// `--mirrored-registries docker.io,registry.k8s.io`: every other registry is `other`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_registries_only() {
    let f = fixture(41, |cfg| {
        cfg.filter = RegistryFilter::new(&["docker.io", "registry.k8s.io"], &[]).unwrap();
    })
    .await;
    let (after, first) = flood_adds_constant_lines(&f, 0x5eed_0001).await;
    for t in &first {
        assert!(!after.contains(t.as_str()), "{t} in\n{after}");
    }
    let registries = values(&after, "registry");
    let allowed: BTreeSet<String> = ["docker.io", "registry.k8s.io", "other"]
        .map(String::from)
        .into();
    assert!(registries.is_subset(&allowed), "{registries:?}");
}

/// No `--mirrored-registries` (every registry is mirrored): the registries this node holds
/// and the first [`MAX_NAMED`] others keep their name, every later one is `other`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registry_mirrored() {
    let f = fixture(42, |_| {}).await;
    let (after, _) = flood_adds_constant_lines(&f, 0x5eed_0002).await;
    let mirror: Vec<_> = samples(&after)
        .into_iter()
        .filter(|(n, _)| n == "spegel_mirror_requests_total")
        .map(|(_, l)| l["registry"].clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let named: Vec<_> = mirror.iter().filter(|r| r.ends_with(".test")).collect();
    // docker.io took one of the places; registry.k8s.io is held, so it takes none.
    assert_eq!(named.len(), MAX_NAMED - 1, "{mirror:?}");
    assert!(mirror.contains(&"other".to_owned()), "{mirror:?}");
    // A held registry keeps its name after the places are taken.
    let missing = "/v2/other-image/manifests/v2?ns=registry.k8s.io";
    assert_eq!(get(f.a.addr, missing).await.status, StatusCode::NOT_FOUND);
    let text = metrics_text(f.metrics).await;
    assert!(
        text.contains(r#"spegel_mirror_requests_total{registry="registry.k8s.io",cache="miss"} 2"#),
        "{text}"
    );
}
