//! Spegel's Grafana dashboard (`fixtures/spegel-chart/grafana-dashboard.json`, the one its chart
//! installs) finds its series on speil: every `spegel_*` and `http_*` metric its queries name is
//! on a running speil's `/metrics`, with every label the queries match on, and with the value
//! where a query fixes one (`cache="hit"`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use speil_tests::cluster::{Cluster, ClusterKind, wait_findable};
use speil_tests::{Generation, http, images, require_components};

/// Labels Prometheus attaches when it scrapes (from the target and its pod), never on
/// `/metrics` itself: Spegel does not export them either.
const TARGET_LABELS: [&str; 6] = ["instance", "job", "pod", "namespace", "container", "node"];

/// One label matcher of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Matcher {
    label: String,
    op: String,
    /// `None` when the value is a Grafana variable (`$registry`): any value.
    value: Option<String>,
}

/// A metric a query selects, with its matchers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    name: String,
    matchers: Vec<Matcher>,
}

/// Every PromQL string of the dashboard: the panels' `expr` and the variables' `query`.
fn queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric selectors in one PromQL expression: identifiers followed by `{…}`, and the
/// first argument of Grafana's `label_values(metric, label)` (then `label` is a matcher with
/// any value). Function names, `by (…)` labels and `[$__interval]` ranges are not selectors:
/// only names of the families we serve are kept (`spegel_`, `http_`, `process_`, `go_`).
fn selectors(expr: &str) -> Vec<Selector> {
    let mut out = Vec::new();
    if let Some(args) = expr
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    {
        if let Some((metric, label)) = args.split_once(',') {
            out.push(Selector {
                name: metric.trim().to_owned(),
                matchers: vec![Matcher {
                    label: label.trim().to_owned(),
                    op: "=~".to_owned(),
                    value: None,
                }],
            });
        }
        return out;
    }
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            // Skip string literals (label values may look like names).
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_') || (i > 0 && is_name_char(chars[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_name_char(chars[i]) {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect();
        let mut j = i;
        while j < chars.len() && chars[j] == ' ' {
            j += 1;
        }
        let mut matchers = Vec::new();
        if j < chars.len() && chars[j] == '{' {
            let end = (j..chars.len())
                .find(|&k| chars[k] == '}')
                .unwrap_or(chars.len());
            let body: String = chars[j + 1..end].iter().collect();
            matchers = parse_matchers(&body);
            i = end + 1;
        } else if chars.get(j) == Some(&'(') {
            // A function call, not a metric.
            continue;
        }
        let ours = ["spegel_", "speil_", "http_", "process_", "go_"]
            .iter()
            .any(|p| name.starts_with(p));
        if ours {
            out.push(Selector { name, matchers });
        }
    }
    out
}

/// `a="x", b=~"$v"` into matchers.
fn parse_matchers(body: &str) -> Vec<Matcher> {
    let mut out = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let op_at = rest.find(['=', '!']).unwrap_or(rest.len());
        let label = rest[..op_at].trim().to_owned();
        let after = &rest[op_at..];
        let op_len =
            if after.starts_with("=~") || after.starts_with("!=") || after.starts_with("!~") {
                2
            } else {
                1
            };
        let op = after[..op_len.min(after.len())].to_owned();
        let after = after[op_len.min(after.len())..].trim_start();
        let after = after.strip_prefix('"').unwrap_or(after);
        let close = after.find('"').unwrap_or(after.len());
        let value = &after[..close];
        out.push(Matcher {
            label,
            op,
            value: (!value.contains('$')).then(|| value.to_owned()),
        });
        rest = after[(close + 1).min(after.len())..]
            .trim_start()
            .trim_start_matches(',')
            .trim();
    }
    out
}

fn spegel_dashboard() -> std::path::PathBuf {
    speil_tests::containerd::shared_dir().join("fixtures/spegel-chart/grafana-dashboard.json")
}

/// speil's own dashboard, the one its chart installs.
fn speil_dashboard() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/speil/monitoring/grafana-dashboard.json")
}

/// A dashboard's selectors of families speil serves.
fn dashboard_selectors(path: &std::path::Path) -> Result<Vec<Selector>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let doc: serde_json::Value = serde_json::from_str(&text)?;
    let mut qs = Vec::new();
    queries(&doc, &mut qs);
    let mut out: Vec<Selector> = qs.iter().flat_map(|q| selectors(q)).collect();
    out.dedup();
    Ok(out)
}

/// `/metrics` as `name → label sets`.
fn series(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut out: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, labels) = match line.find('{') {
            Some(open) => {
                let close = line.rfind('}').unwrap_or(line.len());
                (&line[..open], &line[open + 1..close])
            }
            None => (line.split(' ').next().unwrap_or(line), ""),
        };
        let mut set = BTreeMap::new();
        for m in parse_matchers(labels) {
            set.insert(m.label, m.value.unwrap_or_default());
        }
        out.entry(name.to_owned()).or_default().push(set);
    }
    out
}

/// Why `/metrics` does not satisfy `sel`, if it does not.
fn unmet(
    sel: &Selector,
    exported: &BTreeMap<String, Vec<BTreeMap<String, String>>>,
) -> Option<String> {
    let Some(sets) = exported.get(&sel.name) else {
        return Some(format!("{} is not exported", sel.name));
    };
    let wanted: Vec<&Matcher> = sel
        .matchers
        .iter()
        .filter(|m| !TARGET_LABELS.contains(&m.label.as_str()))
        .collect();
    let ok = sets.iter().any(|set| {
        wanted
            .iter()
            .all(|m| match (set.get(&m.label), &m.value, m.op.as_str()) {
                (None, _, _) => false,
                (Some(_), None, _) => true,
                (Some(v), Some(want), "=") => v == want,
                (Some(v), Some(want), "=~") => want.split('|').any(|w| w == v),
                (Some(v), Some(want), "!=") => v != want,
                (Some(_), Some(_), _) => true,
            })
    });
    (!ok).then(|| format!("no {} series matches {:?}", sel.name, wanted))
}

#[test]
fn the_extractor_reads_every_query_of_the_dashboard() -> Result<()> {
    if !speil_tests::containerd::shared_dir()
        .join("fixtures")
        .exists()
    {
        eprintln!("SKIP: the shared fixtures are missing");
        return Ok(());
    }
    let sels = dashboard_selectors(&spegel_dashboard())?;
    // speil's own dashboard queries what Spegel's lacks.
    let own = dashboard_selectors(&speil_dashboard())?;
    let own_names: Vec<&str> = own.iter().map(|s| s.name.as_str()).collect();
    for name in [
        "speil_served_bytes_total",
        "speil_not_found_total",
        "speil_peers",
        "speil_peer_resumes_total",
        "spegel_advertised_content_digests",
    ] {
        assert!(own_names.contains(&name), "{name} not among {own_names:?}");
    }
    let names: Vec<&str> = sels.iter().map(|s| s.name.as_str()).collect();
    for name in [
        "spegel_advertised_content_digests",
        "spegel_mirror_requests_total",
        "http_request_duration_seconds_bucket",
        "spegel_advertised_image_digests",
    ] {
        assert!(names.contains(&name), "{name} not among {names:?}");
    }
    // kubelet's and cAdvisor's series are not ours.
    assert!(
        !names.iter().any(|n| n.starts_with("kubelet_")),
        "{names:?}"
    );
    let hit = sels
        .iter()
        .flat_map(|s| &s.matchers)
        .any(|m| m.label == "cache" && m.op == "=" && m.value.as_deref() == Some("hit"));
    assert!(hit, "{sels:?}");
    let registry = sels
        .iter()
        .flat_map(|s| &s.matchers)
        .any(|m| m.label == "registry" && m.value.is_none());
    assert!(registry, "{sels:?}");
    // The parser on a line of /metrics.
    let s = series(
        "# TYPE x counter\nspegel_mirror_requests_total{registry=\"a:5000\",cache=\"hit\"} 1\nup 1\n",
    );
    assert_eq!(s["spegel_mirror_requests_total"][0]["cache"], "hit");
    assert_eq!(s["spegel_mirror_requests_total"][0]["registry"], "a:5000");
    assert!(s["up"][0].is_empty());
    Ok(())
}

/// Two nodes: node 0 pulls from the upstream, node 1 from node 0 (a hit) and asks for a tag
/// nobody has (a miss); then node 1's `/metrics` must answer every query of Spegel's dashboard
/// and of speil's own.
async fn dashboard_finds_its_series(generation: Generation) -> Result<()> {
    let mut selectors = dashboard_selectors(&spegel_dashboard())?;
    selectors.extend(dashboard_selectors(&speil_dashboard())?);
    let c = Cluster::start_nodes(
        &ClusterKind::Uniform(generation, speil_tests::Build::Tokio).nodes(2),
    )?;
    let reg = c.registry();
    let small = images::small()?;
    c.h.registry.push(small)?;
    c.h.nodes[0].cri_pull(&small.reference(&reg)).await?;
    wait_findable(&c.speils[1], small, &reg, Duration::from_secs(10))?;
    c.h.nodes[1]
        .cri_pull(&small.reference(&reg))
        .await
        .with_context(|| c.speils[1].log_tail())?;
    let missing = format!(
        "/v2/speil-test/nobody-has-it/manifests/v1?ns={}",
        reg.replace(':', "%3A")
    );
    let r = http::request(c.speils[1].registry_addr(), "HEAD", &missing, &[])?;
    assert_eq!(r.status, 404);
    // The advertised gauges follow the store: wait until node 1 counts the pulled image.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = c.speils[1].metrics()?;
        let exported = series(&text);
        let unmet: Vec<String> = selectors
            .iter()
            .filter_map(|s| unmet(s, &exported))
            .collect();
        if unmet.is_empty() {
            eprintln!(
                "{generation:?}: all {} selectors of the dashboard match node 1's /metrics",
                selectors.len()
            );
            break text;
        }
        if std::time::Instant::now() > deadline {
            panic!("the dashboards do not find: {unmet:#?}\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Spegel's handler label and buckets, where a query could notice them.
    for want in [
        r#"http_request_duration_seconds_bucket{handler="/v2/*",method="GET",code="200",le="0.005"}"#,
        r#"http_response_size_bytes_bucket{handler="/v2/*",method="GET",code="200",le="1024"}"#,
        r#"http_response_size_bytes_bucket{handler="/v2/*",method="GET",code="200",le="2e+09"}"#,
        "# TYPE spegel_mirror_requests_total counter",
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
    assert!(!text.contains("# EOF"));
    // speil's own series: node 1's layers came from node 0, and the missing tag had no peer.
    let exported = series(&text);
    assert!(
        exported["speil_served_bytes_total"]
            .iter()
            .any(|s| s.get("source").map(String::as_str) == Some("peer")),
        "{text}"
    );
    assert!(
        exported["speil_not_found_total"]
            .iter()
            .any(|s| s.get("reason").map(String::as_str) == Some("no_peer")),
        "{text}"
    );
    Ok(())
}

macro_rules! on {
    ($($name:ident => $generation:expr),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> Result<()> {
                if !require_components() {
                    return Ok(());
                }
                dashboard_finds_its_series($generation).await
            }
        )*
    };
}

on!(
    dashboard_finds_its_series_on_containerd_1_6 => Generation::V1_6,
    dashboard_finds_its_series_on_containerd_2_3 => Generation::V2_3,
);
