//! The `hosts.toml` that `speil configuration` writes for IPv6 mirror targets, against real
//! containerd: 2.3.4 and 2.4 try the hosts in the order given (IPv6 first or second); 1.6
//! cannot parse a table header containing `]`, skips the file and pulls from the upstream —
//! the pull still succeeds (the limitation the README states).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use speil_tests::{Generation, Harness, images, require_components, speil};

/// A mirror that answers every request with 404 (so containerd moves on to the next host) and
/// records, per request, a sequence number shared with the other recorder.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<usize>>>,
}

impl Recorder {
    fn start(bind: &str, clock: Arc<AtomicUsize>) -> Recorder {
        let listener = TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if head.is_empty() {
                    continue;
                }
                log.lock()
                    .unwrap()
                    .push(clock.fetch_add(1, Ordering::SeqCst));
                let body = r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"recorder"}]}"#;
                let _ = write!(
                    conn,
                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Recorder { addr, seen }
    }

    fn first(&self) -> Option<usize> {
        self.seen.lock().unwrap().first().copied()
    }
}

/// Configures node 0 with `targets` and pulls through the CRI; returns, per target, the
/// sequence number of the first request it got.
async fn first_requests(
    h: &Harness,
    targets: &[&Recorder],
    rendered: &[String],
) -> (Vec<Option<usize>>, String) {
    let reg = h.registry.host();
    let node = &h.nodes[0];
    let small = images::small().unwrap();
    for t in targets {
        t.seen.lock().unwrap().clear();
    }
    let out = Command::new(speil::binary().unwrap())
        .arg("configuration")
        .arg(format!(
            "--containerd-registry-config-path={}",
            node.certs_dir().display()
        ))
        .arg(format!("--mirror-targets={}", rendered.join(",")))
        .arg(format!("--mirrored-registries=http://{reg}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hosts = std::fs::read_to_string(node.certs_dir().join(&reg).join("hosts.toml")).unwrap();
    // Both mirrors answer 404 (or are skipped): the pull comes from the upstream either way.
    node.cri_pull(&small.reference(&reg)).await.unwrap();
    (targets.iter().map(|t| t.first()).collect(), hosts)
}

async fn ipv6_targets(generation: Generation) {
    if !require_components() {
        return;
    }
    let h = Harness::start_generations(&[generation]).unwrap();
    h.registry.push(images::small().unwrap()).unwrap();
    let clock = Arc::new(AtomicUsize::new(0));
    let v6 = Recorder::start("[::1]:0", clock.clone());
    let v4 = Recorder::start(&format!("{}:0", h.nodes[0].address), clock.clone());
    // The IPv6 target unbracketed, as Spegel's chart renders `http://$(NODE_IP):30020`.
    let v6_target = format!("http://::1:{}", v6.addr.port());
    let v4_target = format!("http://{}", v4.addr);
    for order in [[&v6, &v4], [&v4, &v6]] {
        let rendered: Vec<String> = order
            .iter()
            .map(|r| {
                if std::ptr::eq(*r, &v6) {
                    v6_target.clone()
                } else {
                    v4_target.clone()
                }
            })
            .collect();
        let (firsts, hosts) = first_requests(&h, &order, &rendered).await;
        assert!(
            hosts.contains(&format!("[host.'http://[::1]:{}']", v6.addr.port())),
            "{hosts}"
        );
        if generation.is_v2() {
            assert!(
                firsts[0].is_some() && firsts[1].is_some() && firsts[0] < firsts[1],
                "{}: hosts not asked in order {rendered:?} (first requests {firsts:?}):\n{hosts}",
                generation.name()
            );
        } else {
            assert_eq!(
                firsts,
                [None, None],
                "{}: containerd 1.6 read a table header with ']' — update the README:\n{hosts}",
                generation.name()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_hosts_are_skipped_by_containerd_1_6_and_the_pull_falls_back() {
    ipv6_targets(Generation::V1_6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_hosts_are_tried_in_order_by_containerd_2_3() {
    ipv6_targets(Generation::V2_3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_hosts_are_tried_in_order_by_containerd_2_4() {
    ipv6_targets(Generation::V2_4).await;
}
