//! `speil registry`: the node agent, on any [`Runtime`].
//!
//! Wires the core [`Node`] to its adapters: containerd (content and events), libp2p (the DHT)
//! and hyper (the registry and metrics servers), through the runtime-neutral driver of
//! `speil-http`. Start-up failures end the process with exit 1 and one line saying what is
//! wrong; SIGTERM stops accepting, lets transfers in flight finish and exits 0.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use futures::{FutureExt, StreamExt};
use speil_containerd::{Containerd, ContainerdStore};
use speil_core::filter::RegistryFilter;
use speil_core::mirror::MirrorConfig;
use speil_core::node::{Node, NodeConfig};
use speil_driver::metrics::Metrics;
use speil_driver::{ContentStore, DriverConfig, Parts, Router, Runtime, RuntimeExt as _};
use speil_http::HyperPeers;
use speil_http::server::{RegistryService, ServerConfig};
use speil_p2p::bootstrap::{
    Bootstrap, DnsBootstrap, HttpBootstrap, StaticBootstrap, SystemResolver,
};
use speil_p2p::{P2pRouter, PeerId};
use std::net::TcpListener;

use crate::cli::{BootstrapKind, ListenAddr, RegistryArgs};

/// Where Spegel's Helm chart mounts the basic-auth secret.
const BASIC_AUTH_DIR: &str = "/etc/secrets/basic-auth";

/// A start-up failure: exit code and one line.
struct Fatal(u8, String);

/// Runs the node agent until SIGTERM or SIGINT.
pub async fn run<R: Runtime>(rt: R, args: RegistryArgs) -> Result<ExitCode> {
    match start(rt, args).await {
        Ok(code) => Ok(code),
        Err(Fatal(code, line)) => {
            tracing::error!(command = "registry", "speil registry: {line}");
            Ok(ExitCode::from(code))
        }
    }
}

fn usage(line: impl Into<String>) -> Fatal {
    Fatal(2, line.into())
}

fn failure(line: impl Into<String>) -> Fatal {
    Fatal(1, line.into())
}

fn bind(flag: &str, addr: &ListenAddr) -> Result<TcpListener, Fatal> {
    let candidates = addr
        .candidates()
        .map_err(|e| usage(format!("{flag}: cannot resolve the address: {e}")))?;
    let mut last = None;
    for a in candidates {
        let bound = if a.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
            crate::probe::bind_dual_stack(a)
        } else {
            TcpListener::bind(a)
        };
        match bound {
            Ok(l) => {
                if let Some((tried, e)) = &last {
                    // `:PORT` on a host without IPv6: IPv4 alone.
                    tracing::warn!(
                        flag,
                        listening = %a,
                        error = %e,
                        "cannot listen on {tried} (IPv6 not available?); listening on {a} only"
                    );
                }
                return Ok(l);
            }
            Err(e) => last = Some((a, e)),
        }
    }
    Err(match last {
        Some((a, e)) => failure(format!(
            "{flag}: cannot listen on {a}: {e} (is another process using the port?)"
        )),
        None => usage(format!("{flag}: no address to listen on")),
    })
}

/// The router's listen addresses: `:PORT` and `[::]:PORT` are both families (libp2p has one
/// listener per family), `0.0.0.0:PORT` IPv4 only, an IP that IP, a name its first address.
fn router_addrs(flag: &str, addr: &ListenAddr) -> Result<Vec<SocketAddr>, Fatal> {
    let candidates = addr
        .candidates()
        .map_err(|e| usage(format!("{flag}: cannot resolve the address: {e}")))?;
    let first = *candidates
        .first()
        .ok_or_else(|| usage(format!("{flag}: no address")))?;
    Ok(match first.ip() {
        IpAddr::V6(ip) if ip.is_unspecified() => speil_p2p::dual_stack(first.port()),
        _ => vec![first],
    })
}

async fn start<R: Runtime>(rt: R, args: RegistryArgs) -> Result<ExitCode, Fatal> {
    // Handlers first: a SIGTERM during start-up is not lost.
    let stop_signal = crate::signal::shutdown();
    raise_fd_limit();
    // Flags first: all of these are usage errors (exit 2).
    let mirrored: Vec<String> = args
        .mirrored_registries
        .iter()
        .map(|r| r.dir.clone())
        .collect();
    let filter =
        RegistryFilter::new(&mirrored, &args.registry_filters).map_err(|e| usage(e.to_string()))?;
    if args.mirror_resolve_retries == 0 {
        return Err(usage("--mirror-resolve-retries: must be at least 1"));
    }
    let router_addrs = router_addrs("--router-addr", &args.router_addr)?;
    let router_port = router_addrs[0].port();
    let registry_port = args.registry_addr.port;
    let bootstrap: Arc<dyn Bootstrap> = match args.bootstrap_kind {
        BootstrapKind::Static => {
            if args.static_bootstrap_peers.is_empty() {
                return Err(usage(
                    "--static-bootstrap-peers: required with --bootstrap-kind=static",
                ));
            }
            Arc::new(
                StaticBootstrap::new(&args.static_bootstrap_peers)
                    .map_err(|e| usage(format!("--static-bootstrap-peers: {e}")))?,
            )
        }
        BootstrapKind::Dns => {
            let Some(domain) = args
                .dns_bootstrap_domain
                .as_deref()
                .filter(|d| !d.is_empty())
            else {
                return Err(usage(
                    "--dns-bootstrap-domain: required with --bootstrap-kind=dns",
                ));
            };
            // The node's own IPs are left out of the three dialled (the headless Service lists
            // this node too); a name that resolves only to them is a one-node cluster.
            let own: Vec<IpAddr> = if router_addrs.iter().any(|a| a.ip().is_unspecified()) {
                local_ips()
            } else {
                router_addrs.iter().map(SocketAddr::ip).collect()
            };
            Arc::new(
                DnsBootstrap::new(
                    domain,
                    router_port,
                    Arc::new(SystemResolver::new(rt.clone())),
                )
                .excluding(&own),
            )
        }
        BootstrapKind::Http => {
            let Some(url) = args.http_bootstrap_url.as_deref().filter(|u| !u.is_empty()) else {
                return Err(usage(
                    "--http-bootstrap-url: required with --bootstrap-kind=http",
                ));
            };
            Arc::new(
                HttpBootstrap::new(
                    url,
                    Arc::new(SystemResolver::new(rt.clone())),
                    speil_p2p::connector(rt.clone()),
                )
                .map_err(|e| usage(format!("--http-bootstrap-url: {e}")))?,
            )
        }
    };

    if let Some(dir) = &args.http_bootstrap_cert_dir {
        tracing::warn!(
            dir = %dir.display(),
            "--http-bootstrap-cert-dir is not supported yet: the bootstrap fetch is plain http"
        );
    }

    // containerd: reachable (waited for: speil may start before containerd's socket exists,
    // and comes up by itself once it does; meanwhile nothing listens on the registry port, so
    // containerd goes to the upstream), then configured for mirroring.
    let content_path = readable_dir(&args.containerd_content_path);
    let content_unreadable = content_path.is_none();
    let config = speil_containerd::Config {
        socket: args.containerd_sock.clone(),
        namespace: args.containerd_namespace.clone(),
        content_path,
    };
    // A socket whose directory does not exist is a wrong --containerd-sock, not containerd
    // starting later (it creates the socket in its own directory, which the node keeps).
    if args
        .containerd_sock
        .parent()
        .is_some_and(|dir| !dir.as_os_str().is_empty() && !dir.is_dir())
    {
        return Err(failure(format!(
            "containerd socket {} not found, and neither is its directory: set --containerd-sock",
            args.containerd_sock.display()
        )));
    }
    let mut backoff =
        speil_core::backoff::Backoff::containerd_reconnect(u64::from(std::process::id()));
    let mut waited = false;
    let ctd = loop {
        let why = if args.containerd_sock.exists() {
            match Containerd::connect(rt.clone(), &config).await {
                Ok(ctd) => break ctd,
                Err(e) => format!(
                    "cannot connect to containerd at {}: {e}",
                    args.containerd_sock.display()
                ),
            }
        } else {
            format!(
                "containerd socket {} not found: is containerd running? (set --containerd-sock)",
                args.containerd_sock.display()
            )
        };
        if !waited {
            tracing::warn!("{why}; waiting for it (the registry starts once containerd answers)");
            waited = true;
        } else {
            tracing::debug!("{why}; still waiting");
        }
        rt.sleep(backoff.next_delay()).await;
    };
    if waited {
        tracing::info!(socket = %args.containerd_sock.display(), "containerd answers");
    }
    if args.verify_containerd_config {
        crate::config_cmds::verify_containerd(
            &rt,
            &args.containerd_sock,
            &args.containerd_registry_config_path,
            // Empty (as a chart renders an unset value) means: find it.
            (!args.containerd_config.is_empty()).then(|| Path::new(&args.containerd_config)),
        )
        .await
        .map_err(|e| failure(format!("containerd is not configured for mirroring: {e}")))?;
    }
    if content_unreadable {
        tracing::warn!(
            path = %args.containerd_content_path.display(),
            "content directory not readable: blobs are read through the containerd API"
        );
    }

    // The router.
    let keypair = if args.data_dir.is_empty() {
        speil_p2p::identity::generate()
    } else {
        let dir = Path::new(&args.data_dir);
        let keypair = speil_p2p::identity::load_or_generate(dir)
            .map_err(|e| failure(format!("--data-dir: {e}")))?;
        let key = dir.join(speil_p2p::identity::PRIVATE_KEY_FILE);
        if let Some(warning) = speil_p2p::identity::loose_mode(&key) {
            tracing::warn!("--data-dir: {warning}");
        }
        keypair
    };
    let mut p2p = speil_p2p::Config::new(keypair, router_addrs[0]);
    p2p.listen = router_addrs.clone();
    p2p.bootstrap = Some(bootstrap);
    if let Some(path) = &args.libp2p_psk_file {
        p2p.psk = Some(
            speil_p2p::identity::load_psk(path)
                .map_err(|e| usage(format!("--libp2p-psk-file: {e}")))?,
        );
        if let Some(warning) = speil_p2p::identity::loose_mode(path) {
            tracing::warn!("--libp2p-psk-file: {warning}");
        }
    } else {
        tracing::warn!(
            "no --libp2p-psk-file: anyone who reaches the router port can join the DHT and \
             answer tag lookups with manifests of its own; give every node the same pre-shared \
             key (speil's Helm chart does by default)"
        );
    }
    let handle =
        speil_p2p::start(rt.clone(), p2p).map_err(|e| failure(format!("--router-addr: {e}")))?;
    let peer_id = handle.local_peer_id();
    if let Some(addr) = &args.http_bootstrap_addr {
        // Bound as the registry is: `:PORT` on `[::]`, both families.
        let listener = bind("--http-bootstrap-addr", addr)?;
        let listener = rt
            .listen(listener)
            .map_err(|e| failure(format!("--http-bootstrap-addr: {e}")))?;
        speil_p2p::serve_id_on(
            rt.clone(),
            listener,
            handle.clone(),
            speil_core::limits::ID_EXCHANGE_BUDGET,
        )
        .map_err(|e| failure(format!("--http-bootstrap-addr: {e}")))?;
    }

    // Listeners before anything is announced, so that a taken port fails the start.
    let registry_listener = bind("--registry-addr", &args.registry_addr)?;
    let metrics_listener = bind("--metrics-addr", &args.metrics_addr)?;
    let registry_local = registry_listener
        .local_addr()
        .map_err(|e| failure(format!("--registry-addr: {e}")))?;

    // The node and its driver.
    let (store_events, _watch) = speil_containerd::spawn_watch(
        ctd.clone(),
        speil_core::backoff::Backoff::containerd_reconnect(seed_of(&peer_id)),
    );
    let mut config = NodeConfig::new(peer_id);
    let source: Arc<dyn ContentStore> =
        Arc::new(ContainerdStore::new(rt.clone(), ctd, config.store_timeout));
    let router: Arc<dyn Router<PeerId>> = Arc::new(P2pRouter(handle.clone()));
    config.mirror = MirrorConfig {
        resolve_timeout: args.mirror_resolve_timeout,
        resolve_count: args.mirror_resolve_retries,
        ..MirrorConfig::default()
    };
    config.filter = filter;
    config.seed = seed_of(&peer_id);
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(crate::process_metrics::ProcessCollector));
    let metrics = Arc::new(Metrics::new(registry));
    let server_config = ServerConfig::from_auth_dir(BASIC_AUTH_DIR)
        .map_err(|e| failure(format!("{BASIC_AUTH_DIR}: {e}")))?;
    let (driver_handle, driver) = speil_driver::node::start(Parts {
        node: Node::new(config),
        runtime: rt.clone(),
        store: source.clone(),
        router,
        client: Arc::new(HyperPeers::new(
            rt.clone(),
            server_config.credentials.clone(),
        )),
        store_events: store_events.boxed(),
        metrics,
        config: DriverConfig { registry_port },
    });
    rt.spawn(driver);
    let credentials = server_config.credentials.clone();
    let registry = RegistryService::new(driver_handle, source.clone(), server_config);
    let shared = registry.shared().clone();
    // The measure action reaches the registry over loopback of the family it listens on.
    let debug_registry = match registry_local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, registry_local.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, registry_local.port()))
        }
        _ => registry_local,
    };
    let metrics_service = speil_http::debug::MetricsService::new(
        shared.clone(),
        source,
        rt.clone(),
        speil_http::debug::DebugConfig {
            enabled: args.debug_web_enabled,
            peer_id: peer_id.to_string(),
            registry: debug_registry,
            credentials,
        },
    );
    tracing::info!(
        peer_id = %peer_id,
        registry = %registry_local,
        router = %router_addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" "),
        "speil registry started"
    );

    let listen =
        |flag: &str, l: TcpListener| rt.listen(l).map_err(|e| failure(format!("{flag}: {e}")));
    let registry_listener = listen("--registry-addr", registry_listener)?;
    let metrics_listener = listen("--metrics-addr", metrics_listener)?;
    let (metrics_stop, metrics_stopped) = futures::channel::oneshot::channel::<()>();
    let limits = speil_core::limits::ServerLimits {
        max_connections: args.max_connections,
        ..speil_core::limits::ServerLimits::default()
    };
    let metrics_server = speil_http::Server::with_limits(rt.clone(), limits);
    rt.spawn(
        async move {
            let stopped = async {
                let _ = metrics_stopped.await;
            };
            if let Err(e) = metrics_server
                .serve_until(metrics_listener, metrics_service, stopped)
                .await
            {
                tracing::warn!(error = %e, "metrics server ended");
            }
        }
        .boxed(),
    );
    let (registry_stop, registry_stopped) = futures::channel::oneshot::channel::<()>();
    let (registry_done, registry_ended) = futures::channel::oneshot::channel::<()>();
    let registry_server = speil_http::Server::with_limits(rt.clone(), limits);
    rt.spawn(
        async move {
            let stopped = async {
                let _ = registry_stopped.await;
            };
            if let Err(e) = registry_server
                .serve_until(registry_listener, registry, stopped)
                .await
            {
                tracing::warn!(error = %e, "registry server ended");
            }
            let _ = registry_done.send(());
        }
        .boxed(),
    );
    stop_signal.await;
    tracing::info!("shutting down: finishing transfers in flight");
    shared.shutdown();
    let _ = registry_stop.send(());
    if crate::within(&rt, speil_core::limits::DRAIN_BUDGET, registry_ended)
        .await
        .is_none()
    {
        tracing::warn!("transfers still running after 60 s; exiting anyway");
    }
    let _ = metrics_stop.send(());
    handle.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// Raises the open-file limit to the hard limit (SPEC.md §9): every connection is a file
/// descriptor, and the connection cap must be reachable before the process runs out.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(
            from = ?limit.current,
            to = ?limit.maximum,
            "raised the open-file limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// The IP addresses of this host's interfaces (IPv4 from `/proc/net/fib_trie`, IPv6 from
/// `/proc/net/if_inet6`).
fn local_ips() -> Vec<IpAddr> {
    let mut ips = Vec::new();
    if let Ok(trie) = std::fs::read_to_string("/proc/net/fib_trie") {
        let mut last: Option<IpAddr> = None;
        for line in trie.lines() {
            let t = line.trim();
            if let Some(addr) = t.strip_prefix("|-- ") {
                last = addr.parse().ok();
            } else if t.contains("/32 host LOCAL")
                && let Some(ip) = last
            {
                ips.push(ip);
            }
        }
    }
    if let Ok(v6) = std::fs::read_to_string("/proc/net/if_inet6") {
        for line in v6.lines() {
            let Some(hex) = line.split_whitespace().next() else {
                continue;
            };
            if let Ok(n) = u128::from_str_radix(hex, 16) {
                ips.push(IpAddr::V6(std::net::Ipv6Addr::from(n)));
            }
        }
    }
    ips.sort();
    ips.dedup();
    ips
}

/// The content directory, when this process can read it (blobs are then sent from their
/// files; a blob whose file cannot be opened still goes through the content API).
fn readable_dir(path: &Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(path).ok().map(|_| path.to_path_buf())
}

/// The node's random choices are seeded from its peer id: stable per node, different
/// between nodes.
fn seed_of(peer: &PeerId) -> u64 {
    speil_p2p::seed_of(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_listens_on_both_families_for_an_unspecified_host() {
        let both = router_addrs(
            "--router-addr",
            &crate::cli::parse_listen_addr(":5001").unwrap(),
        )
        .ok()
        .unwrap();
        assert_eq!(both, speil_p2p::dual_stack(5001));
        let v6_any = crate::cli::parse_listen_addr("[::]:5001").unwrap();
        assert_eq!(
            router_addrs("--router-addr", &v6_any).ok().unwrap(),
            speil_p2p::dual_stack(5001)
        );
        let v4_any = crate::cli::parse_listen_addr("0.0.0.0:5001").unwrap();
        assert_eq!(
            router_addrs("--router-addr", &v4_any).ok().unwrap(),
            vec!["0.0.0.0:5001".parse::<SocketAddr>().unwrap()]
        );
        let v6 = crate::cli::parse_listen_addr("[2001:db8::11]:5001").unwrap();
        assert_eq!(
            router_addrs("--router-addr", &v6).ok().unwrap(),
            vec!["[2001:db8::11]:5001".parse::<SocketAddr>().unwrap()]
        );
    }

    #[tokio::test]
    async fn an_unspecified_host_binds_one_socket_for_both_families() {
        let l = bind("--x", &crate::cli::parse_listen_addr(":0").unwrap())
            .ok()
            .unwrap();
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(l.local_addr().unwrap().ip().is_unspecified());
        for peer in ["127.0.0.1", "::1"] {
            let ip: IpAddr = peer.parse().unwrap();
            let connect = tokio::net::TcpStream::connect((ip, port));
            let (c, a) = tokio::join!(connect, l.accept());
            c.unwrap();
            a.unwrap();
        }
    }

    #[test]
    fn local_ips_include_loopback() {
        let ips = local_ips();
        assert!(ips.contains(&IpAddr::from([127, 0, 0, 1])), "{ips:?}");
    }
}
