//! The client on both runtimes against a fake containerd: on smol, the channel, the RPCs, the
//! blocking file reads and the watcher's timer must need no tokio runtime.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use containerd_client::services::v1::{
    ListImagesRequest, ListImagesResponse, Plugin, PluginsRequest, PluginsResponse,
    SubscribeRequest,
};
use containerd_client::types::Envelope;
use futures::channel::oneshot;
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use speil_core::Digest;
use speil_core::backoff::Backoff;
use speil_core::store::StoreEvent;
use speil_driver::Runtime;
use speil_driver::smol::Smol;
use speil_driver::tokio::Tokio;
use tonic::body::Body;
use tonic::server::{Grpc, NamedService};
use tonic::transport::Endpoint;
use tonic::{Response, Status};

use tonic::codegen::http;

use crate::{Config, Containerd, Error, spawn_watch};

/// CRI `VersionRequest` and `VersionResponse` as the fake reads and writes them (written
/// apart from the client's, so the test also checks the field numbers).
#[derive(Clone, PartialEq, prost::Message)]
struct VersionRequest {
    #[prost(string, tag = "1")]
    version: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct VersionResponse {
    #[prost(string, tag = "3")]
    runtime_version: String,
}

/// `fut`, or a panic after `limit` on `rt`'s timer.
async fn within<R: Runtime, T>(rt: &R, limit: Duration, fut: impl Future<Output = T>) -> T {
    match speil_driver::within(rt, limit, fut).await {
        Some(v) => v,
        None => panic!("not done within {limit:?}"),
    }
}

// --- a fake containerd (a tonic server on its own tokio thread) ------------------------------

/// Answers Introspection/Plugins, CRI Version, Images/List (failing the first call, as a
/// containerd still starting does) and Events/Subscribe (no events).
#[derive(Clone, Default)]
struct Fake {
    list_calls: Arc<AtomicUsize>,
}

impl Fake {
    async fn handle(self, req: http::Request<Body>) -> http::Response<Body> {
        let path = req.uri().path().to_owned();
        match path.as_str() {
            "/containerd.services.introspection.v1.Introspection/Plugins" => {
                let svc = tower::service_fn(|_: tonic::Request<PluginsRequest>| async {
                    Ok::<_, Status>(Response::new(PluginsResponse {
                        plugins: vec![Plugin {
                            r#type: "io.containerd.cri.v1".into(),
                            id: "images".into(),
                            ..Plugin::default()
                        }],
                    }))
                });
                Grpc::new(tonic_prost::ProstCodec::default())
                    .unary(svc, req)
                    .await
            }
            "/runtime.v1.RuntimeService/Version" => {
                let svc = tower::service_fn(|req: tonic::Request<VersionRequest>| async move {
                    assert_eq!(req.get_ref().version, "v1");
                    Ok::<_, Status>(Response::new(VersionResponse {
                        runtime_version: "v9.9.9-fake".into(),
                    }))
                });
                Grpc::new(tonic_prost::ProstCodec::default())
                    .unary(svc, req)
                    .await
            }
            "/containerd.services.images.v1.Images/List" => {
                let calls = self.list_calls.clone();
                let svc = tower::service_fn(move |_: tonic::Request<ListImagesRequest>| {
                    let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                    async move {
                        if first {
                            Err(Status::unavailable("still starting"))
                        } else {
                            Ok(Response::new(ListImagesResponse { images: vec![] }))
                        }
                    }
                });
                Grpc::new(tonic_prost::ProstCodec::default())
                    .unary(svc, req)
                    .await
            }
            "/containerd.services.events.v1.Events/Subscribe" => {
                let svc = tower::service_fn(|_: tonic::Request<SubscribeRequest>| async {
                    let events = futures::stream::pending::<Result<Envelope, Status>>();
                    Ok::<_, Status>(Response::new(events))
                });
                Grpc::new(tonic_prost::ProstCodec::default())
                    .server_streaming(svc, req)
                    .await
            }
            _ => Status::unimplemented(path).into_http(),
        }
    }
}

/// [`Fake`] under one of the service names tonic routes by.
#[derive(Clone)]
struct Named<const I: usize>(Fake);

impl NamedService for Named<0> {
    const NAME: &'static str = "containerd.services.introspection.v1.Introspection";
}
impl NamedService for Named<1> {
    const NAME: &'static str = "runtime.v1.RuntimeService";
}
impl NamedService for Named<2> {
    const NAME: &'static str = "containerd.services.images.v1.Images";
}
impl NamedService for Named<3> {
    const NAME: &'static str = "containerd.services.events.v1.Events";
}

impl<const I: usize> tower::Service<http::Request<Body>> for Named<I> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        self.0.clone().handle(req).map(Ok).boxed()
    }
}

/// The fake's thread; stops it when dropped.
struct FakeServer {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    fn start(socket: PathBuf) -> FakeServer {
        let (stop, stopped) = oneshot::channel::<()>();
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                let incoming = futures::stream::unfold(listener, |l| async move {
                    let next = l.accept().await.map(|(s, _)| s);
                    Some((next, l))
                });
                let fake = Fake::default();
                tonic::transport::Server::builder()
                    .add_service(Named::<0>(fake.clone()))
                    .add_service(Named::<1>(fake.clone()))
                    .add_service(Named::<2>(fake.clone()))
                    .add_service(Named::<3>(fake))
                    .serve_with_incoming_shutdown(Box::pin(incoming), stopped.map(|_| ()))
                    .await
                    .unwrap();
            });
        });
        FakeServer {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn blob_in(content: &Path, bytes: &[u8]) -> Digest {
    let digest = Digest::sha256_of(bytes);
    let dir = content.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(digest.hex()), bytes).unwrap();
    digest
}

/// Connects, calls, reads a blob from the content directory and follows the watcher through
/// one failed and one good snapshot, all on `rt`.
async fn against_the_fake<R: Runtime>(rt: R, socket: &Path, content: &Path) {
    let blob = br#"{"schemaVersion":2}"#;
    let digest = blob_in(content, blob);
    let config = Config {
        socket: socket.to_path_buf(),
        namespace: "k8s.io".into(),
        content_path: Some(content.to_path_buf()),
    };
    let limit = Duration::from_secs(30);
    let client = within(&rt, limit, Containerd::connect(rt.clone(), &config))
        .await
        .unwrap();
    assert_eq!(client.content_path(), Some(content));
    let version = within(&rt, limit, client.cri_runtime_version()).await;
    assert_eq!(version.unwrap(), "v9.9.9-fake");
    let plugins = within(&rt, limit, client.introspection_plugins(&["id==images"]))
        .await
        .unwrap();
    assert_eq!(plugins.len(), 1);
    assert_eq!(plugins[0].id, "images");
    let read = within(&rt, limit, client.read_small(&digest, 1024)).await;
    assert_eq!(&read.unwrap()[..], &blob[..]);
    let missing = Digest::sha256_of(b"absent");
    let err = within(&rt, limit, client.read_blob(&missing, 0, None))
        .await
        .unwrap_err();
    // Not in the directory, so the content API was asked (and does not serve Info).
    assert!(
        matches!(
            err,
            Error::Rpc {
                call: "content.Info",
                ..
            }
        ),
        "{err}"
    );

    // The first List fails: Disconnected, a reconnect delay on `rt`'s timer, then a snapshot.
    let (mut events, ended) = spawn_watch(client.clone(), Backoff::containerd_reconnect(7));
    let started = rt.now();
    let first = within(&rt, limit, events.next()).await;
    assert_eq!(first, Some(StoreEvent::Disconnected));
    let second = within(&rt, limit, events.next()).await;
    assert_eq!(second, Some(StoreEvent::Snapshot(vec![])));
    let waited = rt.now() - started;
    assert!(
        waited >= Duration::from_millis(50),
        "reconnected after {waited:?}"
    );
    drop(events);
    within(&rt, limit, ended).await;
}

#[test]
fn the_client_on_smol_needs_no_tokio_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("containerd.sock");
    let _server = FakeServer::start(socket.clone());
    let rt = Smol::new();
    rt.block_on(1, async {
        assert!(tokio::runtime::Handle::try_current().is_err());
        against_the_fake(rt.clone(), &socket, &dir.path().join("content")).await;
        // tonic's connection and buffer tasks ran on these threads: no tokio there either.
        let (tx, rx) = oneshot::channel();
        rt.spawn(Box::pin(async move {
            let _ = tx.send(tokio::runtime::Handle::try_current().is_err());
        }));
        assert!(
            rx.await.unwrap(),
            "a tokio runtime is entered on the executor"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_on_tokio() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("containerd.sock");
    let _server = FakeServer::start(socket.clone());
    against_the_fake(Tokio, &socket, &dir.path().join("content")).await;
}

#[tokio::test]
async fn missing_socket_is_a_clear_error() {
    let dir = std::env::temp_dir().join("speil-containerd-no-such-dir");
    let config = Config {
        socket: dir.join("containerd.sock"),
        namespace: "k8s.io".into(),
        content_path: None,
    };
    let err = Containerd::connect(Tokio, &config).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.to_string().contains("containerd.sock"), "{err}");
    assert!(err.is_connection());
}

#[test]
fn bad_namespace_is_rejected() {
    let rt = Smol::new();
    rt.block_on(1, async {
        let channel = Endpoint::from_static("http://[::]:50051")
            .executor(speil_driver::io::Executor(rt.clone()))
            .connect_lazy();
        for ns in ["", "bad\nname"] {
            let err = Containerd::from_channel(rt.clone(), channel.clone(), ns, None)
                .await
                .unwrap_err();
            assert!(matches!(err, Error::InvalidNamespace(_)), "{err}");
        }
        let c = Containerd::from_channel(
            rt.clone(),
            channel,
            "k8s.io",
            Some(Path::new("/nonexistent")),
        )
        .await
        .unwrap();
        assert_eq!(c.namespace(), "k8s.io");
        assert!(
            c.content_path().is_none(),
            "unreadable content path is not used"
        );
    });
}
