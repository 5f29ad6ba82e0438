//! The metrics and debug server (SPEC.md §7): `/metrics`, `/debug/web/` (one self-contained
//! page), `/debug/web/metadata`, and the JSON endpoints the page calls
//! (`/debug/web/api/state`, `POST /debug/web/api/measure?image=<reference>`).
//!
//! The "measure" action pulls an image through this node's own registry, exactly as
//! containerd would (manifest by tag with `ns`, then every blob by digest), and reports for
//! each blob whether it was served from the local store or from a peer, its size and speed.
//! Because it moves data with the registry's credentials, it is a `POST` (a link or an image
//! on another site cannot trigger it), a browser request from another origin (`Origin` not
//! this server, or `Sec-Fetch-Site` other than `same-origin`) is refused with 403, and only
//! one runs at a time (429 while one does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use speil_core::manifest::{self, ChildRole, MAX_MANIFEST_SIZE, ManifestKind};
use speil_core::request::{percent_decode, percent_encode};
use speil_core::{Digest, Reference};

use crate::BoxError;
use crate::body::{self, ResponseBody};
use speil_driver::ContentStore;
use speil_driver::Runtime;
use speil_driver::Shared;

/// How the debug server is set up.
#[derive(Debug, Clone)]
pub struct DebugConfig {
    /// Whether `/debug/web/` is served (`--debug-web-enabled`).
    pub enabled: bool,
    /// This node's peer id, for `/debug/web/metadata`.
    pub peer_id: String,
    /// Where this node's registry is reached (for the measure action).
    pub registry: SocketAddr,
    /// The registry's basic-auth credentials, when auth is on (the measure action sends them).
    pub credentials: Option<crate::auth::Credentials>,
}

/// The metrics and debug service. Clone it for each connection.
#[derive(Clone)]
pub struct MetricsService<R> {
    inner: Arc<Inner<R>>,
}

struct Inner<R> {
    shared: Arc<Shared>,
    source: Arc<dyn ContentStore>,
    runtime: R,
    config: DebugConfig,
    /// A measurement is running.
    measuring: AtomicBool,
}

impl<R> std::fmt::Debug for MetricsService<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsService").finish_non_exhaustive()
    }
}

impl<R: Runtime> MetricsService<R> {
    /// A service over the shared state.
    pub fn new(
        shared: Arc<Shared>,
        source: Arc<dyn ContentStore>,
        runtime: R,
        config: DebugConfig,
    ) -> MetricsService<R> {
        MetricsService {
            inner: Arc::new(Inner {
                shared,
                source,
                runtime,
                config,
                measuring: AtomicBool::new(false),
            }),
        }
    }
}

impl<R: Runtime, B: Send + 'static> hyper::service::Service<Request<B>> for MetricsService<R> {
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<ResponseBody>, BoxError>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.route(req.method(), req.uri(), req.headers()).await) })
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut r = Response::new(body::full(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut r = respond(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain",
        format!("{allow} only\n"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Why a request comes from a page of another origin, if it does. Browsers send `Origin` with
/// every `POST` (and `Sec-Fetch-Site` with every request); a request without them is not a
/// browser's and cannot be triggered by another site.
fn cross_origin(headers: &http::HeaderMap) -> Option<String> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return Some(format!(
            "a request from another site (Sec-Fetch-Site: {site})"
        ));
    }
    match (text("origin"), text("host")) {
        (None, _) => None,
        (Some(origin), Some(host))
            if origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                == Some(host) =>
        {
            None
        }
        (Some(origin), _) => Some(format!(
            "a request from another origin ({origin}); the measure action runs from the debug page only"
        )),
    }
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    respond(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

impl<R: Runtime> Inner<R> {
    async fn route(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Response<ResponseBody> {
        let path = uri.path();
        if self.config.enabled && path == "/debug/web/api/measure" {
            return self.measure_action(method, uri, headers).await;
        }
        if *method != Method::GET && *method != Method::HEAD {
            return not_allowed("GET, HEAD");
        }
        if path == "/metrics" {
            let peers = self.shared.peers().len();
            let m = &self.shared.metrics;
            m.peers.set(i64::try_from(peers).unwrap_or(i64::MAX));
            if let Some(records) = self.shared.router_records() {
                m.dht_records
                    .set(i64::try_from(records).unwrap_or(i64::MAX));
            }
            return respond(
                StatusCode::OK,
                speil_driver::metrics::PROMETHEUS_TEXT,
                self.shared.metrics.encode(),
            );
        }
        if !self.config.enabled || !path.starts_with("/debug/web") {
            return respond(StatusCode::NOT_FOUND, "text/plain", "not found\n");
        }
        match path {
            "/debug/web" | "/debug/web/" => {
                respond(StatusCode::OK, "text/html; charset=utf-8", PAGE)
            }
            "/debug/web/metadata" => json(
                StatusCode::OK,
                &serde_json::json!({ "libp2p": { "id": self.config.peer_id } }),
            ),
            "/debug/web/api/state" => json(StatusCode::OK, &self.state()),
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        }
    }

    /// `POST /debug/web/api/measure?image=<reference>`: same origin, one at a time.
    async fn measure_action(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> Response<ResponseBody> {
        if *method != Method::POST {
            return not_allowed("POST");
        }
        if let Some(why) = cross_origin(headers) {
            return json(StatusCode::FORBIDDEN, &serde_json::json!({ "error": why }));
        }
        if self.measuring.swap(true, Ordering::AcqRel) {
            return json(
                StatusCode::TOO_MANY_REQUESTS,
                &serde_json::json!({ "error": "a measurement is running; one runs at a time" }),
            );
        }
        // Cleared however the measurement ends (also when its connection goes away).
        struct Running<'a>(&'a AtomicBool);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _running = Running(&self.measuring);
        let image = uri
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("image="))
            .and_then(percent_decode)
            .unwrap_or_default();
        match self.measure(&image).await {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => json(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": e })),
        }
    }

    fn state(&self) -> serde_json::Value {
        let last = self.shared.last_success().and_then(|t| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs_f64())
        });
        serde_json::json!({
            "peerId": self.config.peer_id,
            "ready": self.shared.ready(),
            "storeConnected": self.shared.store_connected(),
            "peers": self.shared.peers(),
            "images": self.shared.images(),
            "lastMirrorSuccess": last,
        })
    }

    /// Pulls `image` through the local registry and reports each blob's source and speed.
    async fn measure(&self, image: &str) -> Result<serde_json::Value, String> {
        let reference: Reference = image
            .trim()
            .parse()
            .map_err(|e| format!("invalid image reference {image:?}: {e}"))?;
        let started = Instant::now();
        let ns = reference.registry().to_owned();
        let name = reference.repository().to_owned();
        let first = match (reference.digest(), reference.tag()) {
            (Some(d), _) => d.as_str().to_owned(),
            (None, Some(t)) => t.to_owned(),
            (None, None) => "latest".to_owned(),
        };
        let mut manifests = Vec::new();
        let mut blobs = Vec::new();
        let mut next = Some(first);
        // An index names manifests; follow the one for this machine's platform.
        for _ in 0..2 {
            let Some(reference) = next.take() else { break };
            let path = format!(
                "/v2/{name}/manifests/{reference}?ns={}",
                percent_encode(&ns)
            );
            let t = Instant::now();
            let (status, _, bytes) = self.get(&path, true).await?;
            if status != StatusCode::OK {
                return Err(format!("GET {path}: {status}"));
            }
            let bytes = bytes.unwrap_or_default();
            let digest = Digest::sha256_of(&bytes);
            let source = self.source_of(&digest).await;
            manifests.push(serde_json::json!({
                "reference": reference,
                "digest": digest.as_str(),
                "size": bytes.len(),
                "source": source,
                "durationMs": t.elapsed().as_secs_f64() * 1000.0,
            }));
            let parsed = manifest::parse(&bytes).map_err(|e| format!("{reference}: {e}"))?;
            match parsed.kind() {
                ManifestKind::Index => {
                    let (os, arch) = platform();
                    let children = parsed.children();
                    let pick = children
                        .iter()
                        .find(|c| {
                            c.platform
                                .as_ref()
                                .is_some_and(|p| p.os == os && p.architecture == arch)
                        })
                        .or_else(|| children.first());
                    next = pick.map(|c| c.digest.as_str().to_owned());
                }
                ManifestKind::Manifest => {
                    for child in parsed.children() {
                        if !matches!(child.role, ChildRole::Config | ChildRole::Layer) {
                            continue;
                        }
                        let source = self.source_of(&child.digest).await;
                        let path = format!(
                            "/v2/{name}/blobs/{}?ns={}",
                            child.digest,
                            percent_encode(&ns)
                        );
                        let t = Instant::now();
                        let (status, size) = match self.get(&path, false).await {
                            Ok((s, n, _)) => (s, n as u64),
                            Err(e) => return Err(format!("GET {path}: {e}")),
                        };
                        let secs = t.elapsed().as_secs_f64();
                        blobs.push(serde_json::json!({
                            "digest": child.digest.as_str(),
                            "size": size,
                            "status": status.as_u16(),
                            "source": source,
                            "durationMs": secs * 1000.0,
                            "bytesPerSecond": if secs > 0.0 { size as f64 / secs } else { 0.0 },
                        }));
                    }
                }
            }
        }
        Ok(serde_json::json!({
            "image": reference.to_string(),
            "manifests": manifests,
            "blobs": blobs,
            "durationMs": started.elapsed().as_secs_f64() * 1000.0,
        }))
    }

    async fn source_of(&self, digest: &Digest) -> &'static str {
        match self.source.size(digest).await {
            Ok(Some(_)) => "local",
            Ok(None) => "peer",
            Err(_) => "unknown",
        }
    }

    /// GETs `path` from the local registry: the status, the body's length, and the body
    /// itself (≤ 4 MiB) when `keep` (else it is read and discarded; a broken body fails).
    async fn get(
        &self,
        path: &str,
        keep: bool,
    ) -> Result<(StatusCode, usize, Option<Bytes>), String> {
        let addr = self.config.registry;
        let io = self
            .runtime
            .connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(self.runtime.hyper_tcp(io))
                .await
                .map_err(|e| e.to_string())?;
        self.runtime.spawn(Box::pin(async move {
            let _ = conn.await;
        }));
        let mut req = Request::get(path).header(header::HOST, addr.to_string());
        if let Some(c) = &self.config.credentials {
            req = req.header(header::AUTHORIZATION, c.header().clone());
        }
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut kept = BytesMut::new();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("body broke: {e}"))?;
            if let Some(data) = frame.data_ref() {
                total += data.len();
                if keep {
                    if kept.len() + data.len() > MAX_MANIFEST_SIZE {
                        return Err("manifest larger than 4 MiB".into());
                    }
                    kept.extend_from_slice(data);
                }
            }
        }
        Ok((status, total, keep.then(|| kept.freeze())))
    }
}

fn platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    ("linux", arch)
}

/// The debug page: plain HTML, CSS and JavaScript, nothing loaded from elsewhere.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>speil debug</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
code { font-size: .9em; } .ok { color: #070; } .bad { color: #a00; }
</style>
</head>
<body>
<h1>speil <span id="peer"></span></h1>
<p>Ready: <span id="ready">…</span> · store connected: <span id="store">…</span> · last mirror success: <span id="last">…</span></p>
<h2>Peers</h2>
<ul id="peers"></ul>
<h2>Advertised images</h2>
<table><thead><tr><th>image</th><th>digest</th><th>blobs present</th></tr></thead><tbody id="images"></tbody></table>
<h2>Measure</h2>
<form id="measure"><input id="image" size="60" placeholder="registry/repository:tag"> <button>Pull through this node</button></form>
<p id="mstatus"></p>
<table><thead><tr><th>blob</th><th>size</th><th>source</th><th>status</th><th>time (ms)</th><th>MB/s</th></tr></thead><tbody id="blobs"></tbody></table>
<script>
function cell(tr, text) { const td = document.createElement('td'); td.textContent = text; tr.appendChild(td); }
async function refresh() {
  const s = await (await fetch('api/state')).json();
  document.getElementById('peer').textContent = s.peerId;
  const r = document.getElementById('ready'); r.textContent = s.ready; r.className = s.ready ? 'ok' : 'bad';
  document.getElementById('store').textContent = s.storeConnected;
  document.getElementById('last').textContent = s.lastMirrorSuccess ? new Date(s.lastMirrorSuccess * 1000).toISOString() : 'never';
  const peers = document.getElementById('peers'); peers.replaceChildren();
  for (const p of s.peers) { const li = document.createElement('li'); li.textContent = p; peers.appendChild(li); }
  const images = document.getElementById('images'); images.replaceChildren();
  for (const i of s.images) { const tr = document.createElement('tr'); cell(tr, i.name); cell(tr, i.digest); cell(tr, i.present); images.appendChild(tr); }
}
document.getElementById('measure').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const st = document.getElementById('mstatus'); st.textContent = 'pulling…';
  const rows = document.getElementById('blobs'); rows.replaceChildren();
  const res = await fetch('api/measure?image=' + encodeURIComponent(document.getElementById('image').value), { method: 'POST' });
  const m = await res.json();
  if (m.error) { st.textContent = m.error; st.className = 'bad'; return; }
  st.className = 'ok'; st.textContent = m.image + ' pulled in ' + m.durationMs.toFixed(1) + ' ms';
  for (const b of m.blobs) {
    const tr = document.createElement('tr');
    cell(tr, b.digest); cell(tr, b.size); cell(tr, b.source); cell(tr, b.status);
    cell(tr, b.durationMs.toFixed(1)); cell(tr, (b.bytesPerSecond / 1e6).toFixed(2));
    rows.appendChild(tr);
  }
});
refresh(); setInterval(refresh, 5000);
</script>
</body>
</html>
"#;
