//! Bootstrap: how a fresh node finds its first peers (SPEC.md §5).
//!
//! Three kinds, as Spegel's `--bootstrap-kind`:
//! - [`StaticBootstrap`]: multiaddrs that name their peer (`…/p2p/<peer id>`);
//! - [`DnsBootstrap`]: the A and AAAA records of a name (a headless Service), lowest three IPs,
//!   dialled without knowing the peer id (the id is learnt from the connection);
//! - [`HttpBootstrap`]: fetch `GET /id` from a URL; [`serve_id_connection`] answers it.
//!
//! Name resolution and TCP connections go through the [`Resolver`] and [`Connector`] traits, so
//! tests resolve from a hosts-file map and each runtime brings its own sockets. The HTTP client
//! and server here speak HTTP/1.1 with `speil-h1` over any `futures` byte stream; TLS (Spegel's
//! `--http-bootstrap-cert-dir` client certificates) is not supported.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, FutureExt as _};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use speil_driver::Runtime;

use crate::addr::{peer_id_of, tcp_multiaddr, without_peer_id};

/// How many IPs of a DNS name are dialled (the lowest ones).
pub const DNS_BOOTSTRAP_LIMIT: usize = 3;

/// The most bytes read from an HTTP message head or body.
const HTTP_MAX: usize = 64 * 1024;

/// A peer to dial when bootstrapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapPeer {
    /// A peer whose id is known, with its addresses.
    Known {
        /// The peer.
        peer: PeerId,
        /// Its addresses (without `/p2p/`).
        addrs: Vec<Multiaddr>,
    },
    /// An address whose peer id is learnt when the connection is made.
    Address(Multiaddr),
    /// The source named only this node (a one-node cluster, or the first node up).
    Local,
}

/// Failure to find bootstrap peers.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A bootstrap address or URL is malformed.
    #[error("invalid bootstrap configuration: {0}")]
    Invalid(String),
    /// Resolution or connection failed.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The HTTP bootstrap server answered something unusable.
    #[error("bad answer from {url}: {reason}")]
    BadAnswer {
        /// The URL fetched.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// A source of bootstrap peers, asked again each time the routing table is empty.
pub trait Bootstrap: Send + Sync + 'static {
    /// The peers to dial now.
    fn peers(&self) -> BoxFuture<'static, Result<Vec<BootstrapPeer>, BootstrapError>>;
}

/// Resolves a host name to IP addresses (A and AAAA).
pub trait Resolver: Send + Sync + 'static {
    /// All addresses of `name`.
    fn resolve(&self, name: &str) -> BoxFuture<'static, io::Result<Vec<IpAddr>>>;
}

/// A byte stream for the HTTP bootstrap client.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// Opens TCP connections (each runtime brings its own).
pub trait Connector: Send + Sync + 'static {
    /// Connects to `addr`.
    fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn ByteStream>>>;
}

/// The system resolver (`getaddrinfo`, which blocks), run with the runtime's
/// [`Runtime::spawn_blocking`] so that no task waits on it.
#[derive(Clone)]
pub struct SystemResolver<R> {
    rt: R,
}

impl<R: Runtime> SystemResolver<R> {
    /// Resolves on `rt`'s blocking threads.
    pub fn new(rt: R) -> Self {
        SystemResolver { rt }
    }
}

impl<R: Runtime> std::fmt::Debug for SystemResolver<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemResolver")
            .field("runtime", &self.rt.name())
            .finish()
    }
}

impl<R: Runtime> Resolver for SystemResolver<R> {
    fn resolve(&self, name: &str) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> {
        let name = name.to_owned();
        self.rt
            .spawn_blocking(move || {
                (name.as_str(), 0)
                    .to_socket_addrs()
                    .map(|addrs| addrs.map(|a| a.ip()).collect::<Vec<_>>())
            })
            .map(|resolved| resolved.and_then(|result| result))
            .boxed()
    }
}

/// A resolver answering from a fixed map, in the format of `/etc/hosts` (for tests and for
/// clusters without DNS).
#[derive(Debug, Clone, Default)]
pub struct HostsResolver {
    names: BTreeMap<String, Vec<IpAddr>>,
}

impl HostsResolver {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an address for a name.
    pub fn insert(&mut self, name: &str, ip: IpAddr) {
        let ips = self.names.entry(name.to_ascii_lowercase()).or_default();
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }

    /// Parses hosts-file text: `<ip> <name> [<alias>…]` per line, `#` comments.
    pub fn parse(text: &str) -> Result<Self, BootstrapError> {
        let mut hosts = Self::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            let mut fields = line.split_whitespace();
            let Some(ip) = fields.next() else { continue };
            let ip: IpAddr = ip.parse().map_err(|_| {
                BootstrapError::Invalid(format!("hosts line {}: {ip:?} is not an IP", n + 1))
            })?;
            let mut any = false;
            for name in fields {
                hosts.insert(name, ip);
                any = true;
            }
            if !any {
                return Err(BootstrapError::Invalid(format!(
                    "hosts line {}: no name after {ip}",
                    n + 1
                )));
            }
        }
        Ok(hosts)
    }
}

impl Resolver for HostsResolver {
    fn resolve(&self, name: &str) -> BoxFuture<'static, io::Result<Vec<IpAddr>>> {
        let found = self
            .names
            .get(&name.trim_end_matches('.').to_ascii_lowercase())
            .cloned();
        let name = name.to_owned();
        async move {
            found.ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{name}: no such host"))
            })
        }
        .boxed()
    }
}

/// `static` bootstrap: fixed multiaddrs, each ending in `/p2p/<peer id>`.
#[derive(Debug, Clone)]
pub struct StaticBootstrap {
    peers: Vec<BootstrapPeer>,
}

impl StaticBootstrap {
    /// Parses the multiaddrs (`--static-bootstrap-peers`); each must name its peer.
    pub fn new<S: AsRef<str>>(addrs: &[S]) -> Result<Self, BootstrapError> {
        let mut peers: Vec<BootstrapPeer> = Vec::new();
        for text in addrs {
            let text = text.as_ref().trim();
            let addr: Multiaddr = text
                .parse()
                .map_err(|e| BootstrapError::Invalid(format!("multiaddr {text:?}: {e}")))?;
            let peer = peer_id_of(&addr).ok_or_else(|| {
                BootstrapError::Invalid(format!(
                    "multiaddr {text:?} does not end in /p2p/<peer id>"
                ))
            })?;
            let addr = without_peer_id(&addr);
            match peers
                .iter_mut()
                .find(|p| matches!(p, BootstrapPeer::Known { peer: known, .. } if *known == peer))
            {
                Some(BootstrapPeer::Known { addrs, .. }) => addrs.push(addr),
                _ => peers.push(BootstrapPeer::Known {
                    peer,
                    addrs: vec![addr],
                }),
            }
        }
        Ok(StaticBootstrap { peers })
    }
}

impl Bootstrap for StaticBootstrap {
    fn peers(&self) -> BoxFuture<'static, Result<Vec<BootstrapPeer>, BootstrapError>> {
        futures::future::ready(Ok(self.peers.clone())).boxed()
    }
}

/// `dns` bootstrap: the lowest [`DNS_BOOTSTRAP_LIMIT`] IPs of a name, at a fixed port (the
/// cluster's router port), dialled without a peer id.
#[derive(Clone)]
pub struct DnsBootstrap {
    domain: String,
    port: u16,
    exclude: Vec<IpAddr>,
    resolver: Arc<dyn Resolver>,
}

impl DnsBootstrap {
    /// Resolves `domain` with `resolver`; peers listen on `port`.
    pub fn new(domain: &str, port: u16, resolver: Arc<dyn Resolver>) -> Self {
        DnsBootstrap {
            domain: domain.to_owned(),
            port,
            exclude: Vec::new(),
            resolver,
        }
    }

    /// Leaves out the node's own IPs, so that the three chosen are other nodes. A name that
    /// resolves to own IPs only yields [`BootstrapPeer::Local`].
    pub fn excluding(mut self, own_ips: &[IpAddr]) -> Self {
        self.exclude.extend_from_slice(own_ips);
        self
    }
}

impl Bootstrap for DnsBootstrap {
    fn peers(&self) -> BoxFuture<'static, Result<Vec<BootstrapPeer>, BootstrapError>> {
        let resolve = self.resolver.resolve(&self.domain);
        let (domain, port, exclude) = (self.domain.clone(), self.port, self.exclude.clone());
        async move {
            let ips = resolve.await.map_err(|source| BootstrapError::Io {
                what: format!("cannot resolve {domain}"),
                source,
            })?;
            let only_self = !ips.is_empty()
                && ips.iter().all(|ip| {
                    exclude
                        .iter()
                        .any(|own| own.to_canonical() == ip.to_canonical())
                });
            if only_self {
                return Ok(vec![BootstrapPeer::Local]);
            }
            Ok(lowest_ips(ips, &exclude)
                .into_iter()
                .map(|ip| BootstrapPeer::Address(tcp_multiaddr(SocketAddr::new(ip, port))))
                .collect())
        }
        .boxed()
    }
}

/// The lowest [`DNS_BOOTSTRAP_LIMIT`] distinct IPs, IPv4 before IPv6 (a dual-stack name, A and
/// AAAA, yields its IPv4 addresses first; an IPv6-only one its IPv6 addresses), leaving out
/// `exclude`. An IPv4-mapped IPv6 address counts as its IPv4 address.
pub fn lowest_ips(ips: Vec<IpAddr>, exclude: &[IpAddr]) -> Vec<IpAddr> {
    let exclude: Vec<IpAddr> = exclude.iter().map(IpAddr::to_canonical).collect();
    let mut ips: Vec<IpAddr> = ips.iter().map(IpAddr::to_canonical).collect();
    ips.retain(|ip| !exclude.contains(ip) && !ip.is_unspecified());
    ips.sort();
    ips.dedup();
    ips.truncate(DNS_BOOTSTRAP_LIMIT);
    ips
}

/// One entry of the `/id` answer, as Spegel (Go's `peer.AddrInfo`) writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrInfo {
    /// The peer id (base58).
    #[serde(rename = "ID")]
    pub id: String,
    /// Its multiaddrs.
    #[serde(rename = "Addrs", default)]
    pub addrs: Vec<String>,
}

/// Renders the `/id` answer for this node.
pub fn render_id(peer: &PeerId, addrs: &[Multiaddr]) -> String {
    let info = [AddrInfo {
        id: peer.to_string(),
        addrs: addrs
            .iter()
            .map(|a| without_peer_id(a).to_string())
            .collect(),
    }];
    serde_json::to_string(&info).unwrap_or_else(|_| "[]".to_owned())
}

/// Parses an `/id` answer: a JSON list of `{ID, Addrs}`, one such object, or (older Spegel) a
/// bare multiaddr ending in `/p2p/<peer id>`.
pub fn parse_id(body: &str) -> Result<Vec<BootstrapPeer>, String> {
    let body = body.trim();
    if body.starts_with('/') {
        let addr: Multiaddr = body.parse().map_err(|e| format!("multiaddr: {e}"))?;
        let peer = peer_id_of(&addr).ok_or("multiaddr without /p2p/<peer id>")?;
        return Ok(vec![BootstrapPeer::Known {
            peer,
            addrs: vec![without_peer_id(&addr)],
        }]);
    }
    let infos: Vec<AddrInfo> = if body.starts_with('{') {
        vec![serde_json::from_str(body).map_err(|e| format!("JSON: {e}"))?]
    } else {
        serde_json::from_str(body).map_err(|e| format!("JSON: {e}"))?
    };
    let mut peers = Vec::new();
    for info in infos {
        let peer: PeerId = info
            .id
            .parse()
            .map_err(|e| format!("peer id {:?}: {e}", info.id))?;
        let addrs = info
            .addrs
            .iter()
            .map(|a| {
                a.parse::<Multiaddr>()
                    .map(|a| without_peer_id(&a))
                    .map_err(|e| format!("multiaddr {a:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if addrs.is_empty() {
            return Err(format!("peer {peer} has no addresses"));
        }
        peers.push(BootstrapPeer::Known { peer, addrs });
    }
    Ok(peers)
}

/// `http` bootstrap: fetches `/id` from a URL (`http://host:port/path`).
#[derive(Clone)]
pub struct HttpBootstrap {
    url: String,
    host: String,
    port: u16,
    path: String,
    resolver: Arc<dyn Resolver>,
    connector: Arc<dyn Connector>,
}

impl HttpBootstrap {
    /// Fetches from `url`, resolving its host with `resolver` and connecting with `connector`.
    pub fn new(
        url: &str,
        resolver: Arc<dyn Resolver>,
        connector: Arc<dyn Connector>,
    ) -> Result<Self, BootstrapError> {
        let (host, port, path) = parse_http_url(url)?;
        Ok(HttpBootstrap {
            url: url.to_owned(),
            host,
            port,
            path,
            resolver,
            connector,
        })
    }
}

/// Splits `http://host[:port][/path]`; `https` is refused (TLS is not supported).
fn parse_http_url(url: &str) -> Result<(String, u16, String), BootstrapError> {
    let bad = |why: &str| BootstrapError::Invalid(format!("URL {url:?}: {why}"));
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if url.starts_with("https://") {
        return Err(bad("https is not supported, use http"));
    } else {
        return Err(bad("must start with http://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/id"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("missing or unsupported host"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address in brackets"));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
        };
        (host, port)
    } else if authority.matches(':').count() > 1 {
        // An unbracketed IPv6 address (as a chart renders `http://$(NODE_IP):30020` on an
        // IPv6 node): the last `:<digits>` is the port when the rest is an IPv6 address.
        match authority.rsplit_once(':') {
            Some((h, p))
                if !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && h.parse::<std::net::Ipv6Addr>().is_ok() =>
            {
                (h, Some(p))
            }
            _ if authority.parse::<std::net::Ipv6Addr>().is_ok() => (authority, None),
            _ => return Err(bad("bad host")),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
        None => 80,
    };
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(bad("bad path"));
    }
    Ok((host.to_owned(), port, path.to_owned()))
}

/// The `Host` header for `host` (a name or IP, unbracketed) and `port`: IPv6 in brackets, the
/// port left out when it is 80.
fn host_header(host: &str, port: u16) -> String {
    let host = match host.parse::<std::net::Ipv6Addr>() {
        Ok(v6) => format!("[{v6}]"),
        Err(_) => host.to_owned(),
    };
    if port == 80 {
        host
    } else {
        format!("{host}:{port}")
    }
}

impl Bootstrap for HttpBootstrap {
    fn peers(&self) -> BoxFuture<'static, Result<Vec<BootstrapPeer>, BootstrapError>> {
        let this = self.clone();
        async move {
            let ips = match this.host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => this.resolver.resolve(&this.host).await.map_err(|source| {
                    BootstrapError::Io {
                        what: format!("cannot resolve {}", this.host),
                        source,
                    }
                })?,
            };
            if ips.is_empty() {
                return Err(BootstrapError::Io {
                    what: format!("cannot resolve {}", this.host),
                    source: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
                });
            }
            // Every address of the name in turn (a dual-stack name has A and AAAA records;
            // one family may be unreachable from here).
            let mut last = None;
            let mut connected = None;
            for ip in &ips {
                let addr = SocketAddr::new(*ip, this.port);
                match this.connector.connect(addr).await {
                    Ok(stream) => {
                        connected = Some(stream);
                        break;
                    }
                    Err(e) => last = Some((addr, e)),
                }
            }
            let mut stream = match (connected, last) {
                (Some(stream), _) => stream,
                (None, Some((addr, source))) => {
                    return Err(BootstrapError::Io {
                        what: format!("cannot connect to {} (at {addr})", this.url),
                        source,
                    });
                }
                (None, None) => unreachable!("at least one address was tried"),
            };
            let host = host_header(&this.host, this.port);
            let body = http_get(&mut stream, &host, &this.path)
                .await
                .map_err(|source| BootstrapError::Io {
                    what: format!("cannot fetch {}", this.url),
                    source,
                })?;
            parse_id(&body).map_err(|reason| BootstrapError::BadAnswer {
                url: this.url.clone(),
                reason,
            })
        }
        .boxed()
    }
}

fn invalid_data(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn h1_error(e: speil_h1::Error) -> io::Error {
    invalid_data(e.to_string())
}

/// The bounds on the `/id` exchange's message heads.
fn head_limits() -> speil_h1::Limits {
    speil_h1::Limits::default()
}

/// Reads from `s` into `buf` until `parse` finds a whole head or refuses it (the inner error);
/// leaves the bytes after the head in `buf`.
async fn read_head<S, T>(
    s: &mut S,
    buf: &mut Vec<u8>,
    parse: impl Fn(&[u8]) -> Result<speil_h1::Status<(T, usize)>, speil_h1::Error>,
) -> io::Result<Result<T, speil_h1::Error>>
where
    S: AsyncRead + Unpin + ?Sized,
{
    let mut chunk = [0u8; 4096];
    loop {
        match parse(buf) {
            Ok(speil_h1::Status::Complete((head, len))) => {
                buf.drain(..len);
                return Ok(Ok(head));
            }
            Ok(speil_h1::Status::Partial) => {}
            Err(e) => return Ok(Err(e)),
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the end of the message head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `GET path` over `s` (HTTP/1.1, `Connection: close`); the body of a 200 answer. `host` is the
/// `Host` header as sent (an IPv6 address in brackets).
pub async fn http_get<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    host: &str,
    path: &str,
) -> io::Result<String> {
    let mut request = Vec::new();
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::ACCEPT,
        http::HeaderValue::from_static("application/json"),
    );
    speil_h1::encode_request_head(
        &http::Method::GET,
        path,
        host,
        &headers,
        speil_h1::Framing::None,
        true,
        &mut request,
    )
    .map_err(|_| invalid_data(format!("cannot request {path:?} from {host:?}")))?;
    s.write_all(&request).await?;
    s.flush().await?;
    let mut buf = Vec::new();
    let limits = head_limits();
    let head = read_head(s, &mut buf, |b| speil_h1::parse_response(b, &limits))
        .await?
        .map_err(h1_error)?;
    if head.status != http::StatusCode::OK {
        return Err(invalid_data(format!("answer {}", head.status)));
    }
    let body = match speil_h1::response_framing(&http::Method::GET, &head).map_err(h1_error)? {
        speil_h1::Framing::None => Vec::new(),
        speil_h1::Framing::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= HTTP_MAX)
                .ok_or_else(|| invalid_data("body too large"))?;
            read_until(s, &mut buf, |b| b.len() >= n).await?;
            if buf.len() < n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "body shorter than Content-Length",
                ));
            }
            buf.truncate(n);
            buf
        }
        speil_h1::Framing::UntilClose => {
            read_until(s, &mut buf, |_| false).await?;
            buf
        }
        speil_h1::Framing::Chunked => {
            let mut decoder = speil_h1::ChunkedDecoder::new(HTTP_MAX as u64);
            let mut body = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut input = std::mem::take(&mut buf);
            while !decoder.feed(&input, &mut body).map_err(h1_error)?.done {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a chunked body",
                    ));
                }
                input.clear();
                input.extend_from_slice(&chunk[..n]);
            }
            body
        }
    };
    String::from_utf8(body).map_err(|_| invalid_data("body is not UTF-8"))
}

/// Reads from `s` into `buf` until `enough` says so or the connection ends, at most
/// [`HTTP_MAX`] bytes.
async fn read_until<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    buf: &mut Vec<u8>,
    enough: impl Fn(&[u8]) -> bool,
) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    while !enough(buf) {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > HTTP_MAX && !enough(buf) {
            return Err(invalid_data("body too large"));
        }
    }
    Ok(())
}

/// Answers one HTTP connection of the `/id` server: `GET /id` gets `body`, anything else a 404
/// (or 405 for other methods on `/id`); a head that cannot be read gets its error status. The
/// connection is closed afterwards.
pub async fn serve_id_connection<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    body: impl FnOnce() -> String,
) -> io::Result<()> {
    let mut buf = Vec::new();
    let limits = head_limits();
    let head = read_head(s, &mut buf, |b| speil_h1::parse_request(b, &limits)).await?;
    let (status, content_type, body) = match head {
        Err(e) => (e.status(), "text/plain", format!("{e}\n")),
        Ok(parts) => match (parts.method, parts.uri.path()) {
            (http::Method::GET, "/id") => (http::StatusCode::OK, "application/json", body()),
            (_, "/id") => (
                http::StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                String::new(),
            ),
            _ => (
                http::StatusCode::NOT_FOUND,
                "text/plain",
                "not found\n".to_owned(),
            ),
        },
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    let mut response = Vec::new();
    speil_h1::encode_response_head(
        status,
        &headers,
        speil_h1::Framing::Length(body.len() as u64),
        true,
        &mut response,
    );
    response.extend_from_slice(body.as_bytes());
    s.write_all(&response).await?;
    s.flush().await?;
    s.close().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_requires_peer_ids() {
        let peer = PeerId::random();
        let ok = StaticBootstrap::new(&[
            format!("/ip4/127.0.0.1/tcp/5001/p2p/{peer}"),
            format!("/ip4/127.0.0.2/tcp/5001/p2p/{peer}"),
        ])
        .unwrap();
        assert_eq!(ok.peers.len(), 1);
        assert!(StaticBootstrap::new(&["/ip4/127.0.0.1/tcp/5001"]).is_err());
        assert!(StaticBootstrap::new(&["garbage"]).is_err());
    }

    #[test]
    fn lowest_three() {
        let ips: Vec<IpAddr> = [
            "192.0.2.9",
            "192.0.2.10",
            "192.0.2.2",
            "192.0.2.2",
            "::1",
            "192.0.2.3",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let got = lowest_ips(ips.clone(), &[]);
        assert_eq!(
            got,
            ["192.0.2.2", "192.0.2.3", "192.0.2.9"]
                .iter()
                .map(|s| s.parse::<IpAddr>().unwrap())
                .collect::<Vec<_>>()
        );
        let got = lowest_ips(ips, &["192.0.2.2".parse().unwrap()]);
        assert_eq!(got[0], "192.0.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn hosts_parse() {
        let h = HostsResolver::parse("# c\n127.0.0.5 a.b  c\n\n::1 a.b\n").unwrap();
        let got = futures::executor::block_on(h.resolve("A.B.")).unwrap();
        assert_eq!(got.len(), 2);
        assert!(futures::executor::block_on(h.resolve("zz")).is_err());
        assert!(HostsResolver::parse("nope a").is_err());
        assert!(HostsResolver::parse("127.0.0.1").is_err());
    }

    #[test]
    fn id_round_trip_and_formats() {
        let peer = PeerId::random();
        let addrs: Vec<Multiaddr> = vec!["/ip4/127.0.0.7/tcp/5001".parse().unwrap()];
        let body = render_id(&peer, &addrs);
        assert_eq!(
            parse_id(&body).unwrap(),
            vec![BootstrapPeer::Known {
                peer,
                addrs: addrs.clone()
            }]
        );
        let one = format!(r#"{{"ID":"{peer}","Addrs":["/ip4/127.0.0.7/tcp/5001"]}}"#);
        assert_eq!(parse_id(&one).unwrap().len(), 1);
        let bare = format!("/ip4/127.0.0.7/tcp/5001/p2p/{peer}\n");
        assert_eq!(parse_id(&bare).unwrap(), parse_id(&body).unwrap());
        assert!(parse_id("[]").unwrap().is_empty());
        assert!(parse_id(r#"[{"ID":"nope","Addrs":[]}]"#).is_err());
        assert!(parse_id("<html>").is_err());
        assert!(parse_id(&format!(r#"[{{"ID":"{peer}","Addrs":[]}}]"#)).is_err());
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_http_url("http://h:5002/id").unwrap(),
            ("h".into(), 5002, "/id".into())
        );
        assert_eq!(
            parse_http_url("http://[::1]:7").unwrap(),
            ("::1".into(), 7, "/id".into())
        );
        assert!(parse_http_url("https://h/id").is_err());
        assert!(parse_http_url("ftp://h").is_err());
        assert!(parse_http_url("http://h:99999/").is_err());
        assert!(parse_http_url("http:///id").is_err());
        // IPv6: bracketed with or without a port, and unbracketed as a chart renders it.
        assert_eq!(
            parse_http_url("http://[2001:db8::11]:5003/id").unwrap(),
            ("2001:db8::11".into(), 5003, "/id".into())
        );
        assert_eq!(
            parse_http_url("http://[2001:db8::11]/x").unwrap(),
            ("2001:db8::11".into(), 80, "/x".into())
        );
        assert_eq!(
            parse_http_url("http://2001:db8::11:5003/id").unwrap(),
            ("2001:db8::11".into(), 5003, "/id".into())
        );
        assert_eq!(
            parse_http_url("http://fd00::5/id").unwrap(),
            ("fd00::5".into(), 80, "/id".into())
        );
        assert!(parse_http_url("http://[2001:db8::11:5003/id").is_err());
        assert!(parse_http_url("http://[nope]:1/id").is_err());
        assert!(parse_http_url("http://[::1]x/id").is_err());
        assert!(parse_http_url("http://a:b:c/id").is_err());
        assert!(parse_http_url("http://:5/id").is_err());
    }

    #[test]
    fn host_headers_bracket_ipv6() {
        assert_eq!(host_header("2001:db8::11", 5003), "[2001:db8::11]:5003");
        assert_eq!(host_header("::1", 80), "[::1]");
        assert_eq!(host_header("192.0.2.1", 5003), "192.0.2.1:5003");
        assert_eq!(host_header("peers.example", 80), "peers.example");
    }

    #[test]
    fn lowest_ips_of_both_families() {
        let p = |s: &str| s.parse::<IpAddr>().unwrap();
        let dual = vec![
            p("2001:db8::13"),
            p("192.0.2.13"),
            p("2001:db8::11"),
            p("192.0.2.11"),
            p("::ffff:192.0.2.12"),
            p("192.0.2.12"),
        ];
        // IPv4 first, a mapped address deduplicated with its IPv4 form, own IPs left out
        // whichever way they are written.
        assert_eq!(
            lowest_ips(dual.clone(), &[]),
            vec![p("192.0.2.11"), p("192.0.2.12"), p("192.0.2.13")]
        );
        assert_eq!(
            lowest_ips(dual, &[p("::ffff:192.0.2.11"), p("2001:db8::11")]),
            vec![p("192.0.2.12"), p("192.0.2.13"), p("2001:db8::13")]
        );
        let v6 = vec![
            p("2001:db8::13"),
            p("2001:db8::11"),
            p("2001:db8::12"),
            p("::"),
        ];
        assert_eq!(
            lowest_ips(v6, &[p("2001:db8::12")]),
            vec![p("2001:db8::11"), p("2001:db8::13")]
        );
    }

    #[test]
    fn dns_bootstrap_dials_ipv6_peers() {
        let hosts =
            HostsResolver::parse("2001:db8::11 peers\n2001:db8::12 peers\n192.0.2.11 peers\n")
                .unwrap();
        let dns = DnsBootstrap::new("peers", 5001, Arc::new(hosts.clone())).excluding(&[
            "192.0.2.11".parse().unwrap(),
            "2001:db8::11".parse().unwrap(),
        ]);
        let got = futures::executor::block_on(dns.peers()).unwrap();
        assert_eq!(
            got,
            vec![BootstrapPeer::Address(
                "/ip6/2001:db8::12/tcp/5001".parse().unwrap()
            )]
        );
        let alone = DnsBootstrap::new("peers", 5001, Arc::new(hosts)).excluding(&[
            "192.0.2.11".parse().unwrap(),
            "2001:db8::11".parse().unwrap(),
            "2001:db8::12".parse().unwrap(),
        ]);
        assert_eq!(
            futures::executor::block_on(alone.peers()).unwrap(),
            vec![BootstrapPeer::Local]
        );
    }

    /// A connection that answers `answer` and records what was written to it.
    struct Canned {
        answer: futures::io::Cursor<Vec<u8>>,
        written: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl AsyncRead for Canned {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::pin::Pin::new(&mut self.answer).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Canned {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.written.lock().unwrap().extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Refuses every address but `reachable`, where it answers `body`; records the addresses
    /// tried and the bytes sent.
    struct FakeConnector {
        reachable: SocketAddr,
        body: String,
        tried: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
        written: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Connector for FakeConnector {
        fn connect(&self, addr: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn ByteStream>>> {
            self.tried.lock().unwrap().push(addr);
            let result: io::Result<Box<dyn ByteStream>> = if addr == self.reachable {
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{}",
                    self.body.len(),
                    self.body
                );
                Ok(Box::new(Canned {
                    answer: futures::io::Cursor::new(answer.into_bytes()),
                    written: self.written.clone(),
                }))
            } else {
                Err(io::Error::from(io::ErrorKind::ConnectionRefused))
            };
            futures::future::ready(result).boxed()
        }
    }

    #[test]
    fn http_bootstrap_tries_every_address_and_brackets_the_host() {
        let peer = PeerId::random();
        let addrs: Vec<Multiaddr> = vec!["/ip6/2001:db8::11/tcp/5001".parse().unwrap()];
        let tried = Arc::new(std::sync::Mutex::new(Vec::new()));
        let written = Arc::new(std::sync::Mutex::new(Vec::new()));
        let connector = FakeConnector {
            reachable: "[2001:db8::11]:5002".parse().unwrap(),
            body: render_id(&peer, &addrs),
            tried: tried.clone(),
            written: written.clone(),
        };
        // A dual-stack name whose IPv4 address does not answer.
        let hosts =
            HostsResolver::parse("192.0.2.11 node0.test\n2001:db8::11 node0.test\n").unwrap();
        let http = HttpBootstrap::new(
            "http://node0.test:5002/id",
            Arc::new(hosts),
            Arc::new(connector),
        )
        .unwrap();
        let got = futures::executor::block_on(http.peers()).unwrap();
        assert_eq!(got, vec![BootstrapPeer::Known { peer, addrs }]);
        assert_eq!(
            *tried.lock().unwrap(),
            vec![
                "192.0.2.11:5002".parse::<SocketAddr>().unwrap(),
                "[2001:db8::11]:5002".parse().unwrap()
            ]
        );
        let sent = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert!(sent.contains("\r\nHost: node0.test:5002\r\n"), "{sent}");

        // An IPv6 literal, unbracketed as a chart renders it: the Host header is bracketed.
        written.lock().unwrap().clear();
        let connector = FakeConnector {
            reachable: "[2001:db8::11]:5002".parse().unwrap(),
            body: render_id(
                &PeerId::random(),
                &["/ip6/2001:db8::11/tcp/5001".parse().unwrap()],
            ),
            tried: Arc::new(std::sync::Mutex::new(Vec::new())),
            written: written.clone(),
        };
        let http = HttpBootstrap::new(
            "http://2001:db8::11:5002/id",
            Arc::new(HostsResolver::new()),
            Arc::new(connector),
        )
        .unwrap();
        futures::executor::block_on(http.peers()).unwrap();
        let sent = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert!(sent.starts_with("GET /id HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("\r\nHost: [2001:db8::11]:5002\r\n"), "{sent}");
    }

    #[test]
    fn id_answer_with_ipv6_addresses() {
        let peer = PeerId::random();
        let addrs: Vec<Multiaddr> = vec![
            "/ip6/2001:db8::11/tcp/5001".parse().unwrap(),
            "/ip4/192.0.2.11/tcp/5001".parse().unwrap(),
        ];
        let body = render_id(&peer, &addrs);
        assert!(body.contains("/ip6/2001:db8::11/tcp/5001"), "{body}");
        assert_eq!(
            parse_id(&body).unwrap(),
            vec![BootstrapPeer::Known { peer, addrs }]
        );
    }

    #[test]
    fn http_exchange_over_memory() {
        // Server side on a canned request.
        let mut server = futures::io::Cursor::new(b"GET /id HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
        futures::executor::block_on(serve_id_connection(&mut server, || "[1]".into())).unwrap();
        let written = String::from_utf8(server.into_inner()).unwrap();
        assert!(written.contains("HTTP/1.1 200 OK\r\n"), "{written}");
        assert!(written.ends_with("Content-Length: 3\r\nConnection: close\r\n\r\n[1]"));
    }

    fn get_over(answer: &[u8]) -> io::Result<String> {
        let mut conn = Canned {
            answer: futures::io::Cursor::new(answer.to_vec()),
            written: Arc::new(std::sync::Mutex::new(Vec::new())),
        };
        futures::executor::block_on(http_get(&mut conn, "h", "/id"))
    }

    #[test]
    fn http_get_framings() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[1\r\n1;x\r\n]\r\n0\r\n\r\n";
        assert_eq!(get_over(chunked).unwrap(), "[1]");
        assert_eq!(get_over(b"HTTP/1.0 200 OK\r\n\r\n[2]").unwrap(), "[2]");
        assert_eq!(
            get_over(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n[3]extra").unwrap(),
            "[3]"
        );
        assert!(get_over(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").is_err());
        assert!(get_over(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n[3]").is_err());
        assert!(get_over(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[1").is_err());
        assert!(get_over(b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n[3]").is_err());
        assert!(get_over(b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n").is_err());
        assert!(get_over(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn id_server_answers_bad_heads() {
        let answer = |request: Vec<u8>| {
            let mut server = futures::io::Cursor::new(request);
            futures::executor::block_on(serve_id_connection(&mut server, || "[1]".into())).unwrap();
            String::from_utf8_lossy(&server.into_inner()).into_owned()
        };
        let huge = format!("GET /id HTTP/1.1\r\nX: {}\r\n\r\n", "x".repeat(20_000));
        assert!(answer(huge.into_bytes()).contains("HTTP/1.1 431 "));
        assert!(answer(b"GET /id HTTP/9\r\n\r\n".to_vec()).contains("HTTP/1.1 400 "));
        assert!(answer(b"PUT /id HTTP/1.1\r\n\r\n".to_vec()).contains("HTTP/1.1 405 "));
        assert!(answer(b"GET /id?x=1 HTTP/1.1\r\n\r\n".to_vec()).contains("HTTP/1.1 200 OK"));
        assert!(answer(b"GET /x HTTP/1.1\r\n\r\n".to_vec()).contains("HTTP/1.1 404 "));
    }
}
