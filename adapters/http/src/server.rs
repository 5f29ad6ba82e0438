//! The registry server (SPEC.md §2): a hyper `Service` for one connection.
//!
//! Every request is bounded and validated by the core's parser before anything else looks at
//! it. Content requests go to the driver, whose node asks the store and decides: serve exactly
//! this from the local store (digest, size, range), fail (a 404 that says why), or relay a
//! peer's response. The server only executes the decision: it does not stat the store again.

use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use speil_core::Digest;
use speil_core::error::OciError;
use speil_core::manifest;
use speil_core::range::ResolvedRange;
use speil_core::request::{ContentRequest, RegistryRequest, Target, parse_request};
use speil_driver::metrics::{HandlerLabel, HttpLabels};
use speil_driver::{ContentStore, Decision, DriverHandle, Shared};

use crate::BoxError;
use crate::auth::Credentials;
use crate::body::{self, ResponseBody};
use crate::client::{self, DOCKER_CONTENT_DIGEST, OCI_NAMESPACE, PeerResponse, number_value};
use crate::pipe::{Pipe, RelayParts};

/// Where basic-auth credentials come from.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The credentials every `/v2` request must carry, when auth is on (see
    /// [`Credentials::load`]).
    pub credentials: Option<Credentials>,
}

impl ServerConfig {
    /// Loads the credentials from `dir` (Spegel's `/etc/secrets/basic-auth`), if present.
    pub fn from_auth_dir(dir: impl Into<PathBuf>) -> std::io::Result<ServerConfig> {
        Ok(ServerConfig {
            credentials: Credentials::load(&dir.into())?,
        })
    }
}

/// The registry service. Clone it for each connection.
#[derive(Clone)]
pub struct RegistryService {
    inner: Arc<Inner>,
}

struct Inner {
    driver: DriverHandle<PeerResponse>,
    source: Arc<dyn ContentStore>,
    config: ServerConfig,
}

impl std::fmt::Debug for RegistryService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryService").finish_non_exhaustive()
    }
}

impl RegistryService {
    /// A service over the driver and the content source.
    pub fn new(
        driver: DriverHandle<PeerResponse>,
        source: Arc<dyn ContentStore>,
        config: ServerConfig,
    ) -> RegistryService {
        RegistryService {
            inner: Arc::new(Inner {
                driver,
                source,
                config,
            }),
        }
    }

    /// The shared state (shutdown flag, metrics).
    pub fn shared(&self) -> &Arc<Shared> {
        self.inner.driver.shared()
    }

    /// Answers one request (what hyper calls through the `Service` impl).
    pub fn handle<B>(
        &self,
        req: Request<B>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, BoxError>> + Send + 'static {
        let inner = self.inner.clone();
        let (parts, _body) = req.into_parts();
        async move {
            let started = Instant::now();
            let handler = handler_of(parts.uri.path());
            let metrics = inner.driver.shared().metrics.clone();
            let inflight = HandlerLabel {
                handler: handler.to_owned(),
            };
            metrics.http_inflight.get_or_create(&inflight).inc();
            let guard = Measure {
                metrics: metrics.clone(),
                handler,
                method: parts.method.clone(),
                started,
                status: None,
                size: 0,
                region: None,
                source: None,
            };
            let result = inner.route(&parts.method, &parts.uri, &parts.headers).await;
            match result {
                Ok(response) => {
                    let mut guard = guard;
                    guard.status = Some(response.status());
                    // Bytes of a file region the connection sends itself count too.
                    guard.region = response.extensions().get::<body::FileRegion>().cloned();
                    guard.source = response.extensions().get::<ServedFrom>().map(|s| s.0);
                    let (p, b) = response.into_parts();
                    Ok(Response::from_parts(
                        p,
                        Measured { inner: b, guard }.boxed_unsync(),
                    ))
                }
                Err(e) => Err(e),
            }
        }
    }
}

impl<B> hyper::service::Service<Request<B>> for RegistryService
where
    B: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<ResponseBody>, BoxError>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        Box::pin(self.handle(req))
    }
}

/// The `handler` label of a path: Spegel's (its route patterns as `metricsFriendlyPath` turns
/// them into labels: `GET /v2/` is `/v2/*`), and `other` for paths no route matches, which
/// Spegel does not count at all.
fn handler_of(path: &str) -> &'static str {
    match path {
        "/readyz" => "/readyz",
        "/livez" => "/livez",
        p if p == "/v2" || p.starts_with("/v2/") => "/v2/*",
        _ => "other",
    }
}

/// The response of an OCI error (no body for HEAD).
pub fn error_response(e: &OciError, head: bool) -> Response<ResponseBody> {
    let bytes = e.body();
    let mut r = Response::new(if head {
        body::empty()
    } else {
        body::full(Bytes::from(bytes.clone()))
    });
    *r.status_mut() = e.status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(e.content_type()),
    );
    h.insert(header::CONTENT_LENGTH, number_value(bytes.len() as u64));
    for (name, value) in e.extra_headers() {
        h.append(name.clone(), value.clone());
    }
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<ResponseBody> {
    let mut r = Response::new(body::full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

impl Inner {
    async fn route(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Result<Response<ResponseBody>, BoxError> {
        let head = *method == Method::HEAD;
        let shared = self.driver.shared();
        if shared.shutting_down() {
            let e = OciError::unavailable("the node is shutting down");
            return Ok(error_response(&e, head));
        }
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        if uri.path().starts_with("/v2")
            && let Some(creds) = &self.config.credentials
            && !creds.check(headers)
        {
            return Ok(error_response(&OciError::unauthorized(), head));
        }
        let parsed = match parse_request(method, path_and_query, headers) {
            Ok(p) => p,
            Err(e) => return Ok(error_response(&e, head)),
        };
        match parsed {
            RegistryRequest::Ping { .. } => {
                let mut r = Response::new(body::empty());
                r.headers_mut().insert(
                    "docker-distribution-api-version",
                    HeaderValue::from_static("registry/2.0"),
                );
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, number_value(0));
                Ok(r)
            }
            RegistryRequest::Livez => Ok(plain(StatusCode::OK, "ok\n")),
            RegistryRequest::Readyz => Ok(if shared.ready() {
                plain(StatusCode::OK, "ok\n")
            } else {
                plain(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }),
            RegistryRequest::Content(req) => self.content(req).await,
        }
    }

    async fn content(&self, req: ContentRequest) -> Result<Response<ResponseBody>, BoxError> {
        let head = req.head();
        let decision = self.driver.decide(req.clone()).await;
        match &decision {
            Decision::ServeLocal { .. } => tracing::info!(
                source = "local",
                for_peer = req.mirrored(),
                method = %req.method(),
                path = %req.path_and_query(),
                "served"
            ),
            Decision::Fail(e) => tracing::info!(
                status = e.status.as_u16(),
                for_peer = req.mirrored(),
                method = %req.method(),
                path = %req.path_and_query(),
                reason = %e.message,
                "not served"
            ),
            Decision::Abort => tracing::warn!(
                method = %req.method(),
                path = %req.path_and_query(),
                "aborted: no peer could complete the response"
            ),
            Decision::Relay(_) => {}
        }
        match decision {
            Decision::ServeLocal {
                digest,
                size,
                range,
                head,
            } => {
                let mut r = self.serve_local(&req, &digest, size, range, head).await;
                r.extensions_mut().insert(ServedFrom("local"));
                Ok(r)
            }
            Decision::Fail(e) => Ok(error_response(&e, head)),
            Decision::Relay(relay) => {
                let (first, parts) = RelayParts::split(relay);
                let (response_parts, body) = first.response.into_parts();
                let expected = if head {
                    None
                } else {
                    client::content_length(&response_parts.headers)
                };
                let pipe = Pipe::relay(body, expected, parts);
                let mut r = client::relay(response_parts, pipe.boxed_unsync());
                r.extensions_mut().insert(ServedFrom("peer"));
                Ok(r)
            }
            Decision::Abort => Err("no peer could complete the response".into()),
        }
    }

    async fn serve_local(
        &self,
        req: &ContentRequest,
        digest: &Digest,
        size: u64,
        range: Option<ResolvedRange>,
        head: bool,
    ) -> Response<ResponseBody> {
        let result = if req.is_manifest() {
            self.serve_manifest(req, digest, head).await
        } else {
            self.serve_blob(req, digest, size, range, head).await
        };
        match result {
            Ok(mut r) => {
                let h = r.headers_mut();
                if let Ok(v) = HeaderValue::from_str(digest.as_str()) {
                    h.insert(DOCKER_CONTENT_DIGEST, v);
                }
                if let Some(ns) = req.ns()
                    && let Ok(v) = HeaderValue::from_str(ns)
                {
                    h.insert(OCI_NAMESPACE, v);
                }
                r
            }
            Err(e) => error_response(&e, head),
        }
    }

    /// A manifest the node decided to serve (the core checked its size against the 4 MiB
    /// cap; the store refuses a larger one too).
    async fn serve_manifest(
        &self,
        req: &ContentRequest,
        digest: &Digest,
        head: bool,
    ) -> Result<Response<ResponseBody>, OciError> {
        let Some(bytes) = self
            .source
            .read_manifest(digest)
            .await
            .map_err(unavailable)?
        else {
            return Err(not_found(req, "not present on this node"));
        };
        let parsed = manifest::parse(&bytes).map_err(|e| {
            OciError::manifest_unknown(req.reference(), format!("{digest} is not a manifest: {e}"))
        })?;
        let content_type = HeaderValue::from_str(parsed.media_type())
            .unwrap_or(HeaderValue::from_static(manifest::OCI_MANIFEST));
        let len = bytes.len() as u64;
        let mut r = Response::new(if head {
            body::empty()
        } else {
            body::full(bytes)
        });
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, content_type);
        h.insert(header::CONTENT_LENGTH, number_value(len));
        Ok(r)
    }

    /// Exactly the blob bytes the node decided on: `range` of `size`, or the whole blob.
    async fn serve_blob(
        &self,
        req: &ContentRequest,
        digest: &Digest,
        size: u64,
        range: Option<ResolvedRange>,
        head: bool,
    ) -> Result<Response<ResponseBody>, OciError> {
        let (offset, len) = match range {
            Some(ResolvedRange { start, end }) => (start, end - start + 1),
            None => (0, size),
        };
        let mut region = None;
        let body = if head || len == 0 {
            body::empty()
        } else {
            let Some(blob) = self
                .source
                .open_blob(digest, offset, len)
                .await
                .map_err(unavailable)?
            else {
                return Err(not_found(req, "not present on this node"));
            };
            let (body, file_region) = body::blob_region(blob, len);
            region = file_region;
            body
        };
        let mut r = Response::new(body);
        if let Some(region) = region {
            r.extensions_mut().insert(region);
        }
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        h.insert(header::CONTENT_LENGTH, number_value(len));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Some(range) = range {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&range.content_range(size)) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        Ok(r)
    }
}

fn unavailable(e: speil_driver::SourceError) -> OciError {
    OciError::unavailable(format!("content store: {e}"))
}

fn not_found(req: &ContentRequest, reason: &str) -> OciError {
    match req.target() {
        Target::Blob(d) => OciError::blob_unknown(d, reason),
        _ => OciError::manifest_unknown(req.reference(), reason),
    }
}

/// Where a content response's body comes from (`local`, `peer`), for
/// `speil_served_bytes_total`.
#[derive(Debug, Clone, Copy)]
struct ServedFrom(&'static str);

/// Records a response's duration and size when its body is done (or dropped).
struct Measure {
    source: Option<&'static str>,
    metrics: Arc<speil_driver::metrics::Metrics>,
    handler: &'static str,
    method: Method,
    started: Instant,
    status: Option<StatusCode>,
    size: u64,
    region: Option<body::FileRegion>,
}

impl Drop for Measure {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.http_inflight
            .get_or_create(&HandlerLabel {
                handler: self.handler.to_owned(),
            })
            .dec();
        // A request whose handler failed (an aborted connection) has no status. Every label
        // is a bounded set: a fixed route name, `GET`/`HEAD`/`other`, a status speil chose.
        let labels = HttpLabels::new(self.handler, &self.method, self.status);
        m.http_duration
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        let size = self.size + self.region.as_ref().map_or(0, body::FileRegion::sent);
        m.http_size.get_or_create(&labels).observe(size as f64);
        if let (Some(source), Some(status)) = (self.source, self.status)
            && status.is_success()
        {
            m.served(source, size);
        }
    }
}

struct Measured {
    inner: ResponseBody,
    guard: Measure,
}

impl Body for Measured {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r
            && let Some(data) = frame.data_ref()
        {
            this.guard.size += data.len() as u64;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
