//! The metrics and debug server over real HTTP.

mod common;

use std::sync::Arc;

use common::*;
use http::StatusCode;
use speil_driver::tokio::Tokio;
use speil_http::debug::{DebugConfig, MetricsService};
use speil_http::server::ServerConfig;

async fn post(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Got {
    request(addr, http::Method::POST, path, headers)
        .await
        .expect("request")
}

#[tokio::test]
async fn metrics_and_debug_page() {
    let source = Arc::new(FakeContentStore::default());
    let config_bytes = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config = source.put(config_bytes.clone());
    let layer_bytes = blob_bytes(1_000_000, 3);
    let layer = source.put(layer_bytes.clone());
    let manifest = source.put(format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{}}}]}}"#,
        config_bytes.len(),
        layer_bytes.len()
    ));
    source.tag("example.com/test/app:v1", &manifest);
    let mut ls = listeners(31, 2).await;
    let metrics_listener = ls.pop().unwrap();
    let metrics_addr = metrics_listener.local_addr().unwrap();
    let node = start_node(
        1,
        ls.pop().unwrap(),
        Arc::new(FakeDht::default()),
        source.clone(),
        ServerConfig { credentials: None },
    )
    .await;
    let service = MetricsService::new(
        node.handle.shared().clone(),
        source.clone(),
        Tokio,
        DebugConfig {
            enabled: true,
            peer_id: "12D3KooWTest".into(),
            registry: node.addr,
            credentials: None,
        },
    );
    let task = tokio::spawn(async move {
        speil_http::Server::new(Tokio)
            .serve(metrics_listener, service)
            .await
    });
    eventually(|| node.handle.shared().store_connected()).await;

    // Some traffic, so that the labelled series exist.
    assert_eq!(get(node.addr, "/v2/").await.status, StatusCode::OK);
    let unknown = speil_core::Digest::sha256_of(b"unknown");
    let g = get(
        node.addr,
        &format!("/v2/test/app/blobs/{unknown}?ns=example.com"),
    )
    .await;
    assert_eq!(g.status, StatusCode::NOT_FOUND);

    let g = get(metrics_addr, "/metrics").await;
    assert_eq!(g.status, StatusCode::OK);
    let text = String::from_utf8(g.bytes().to_vec()).unwrap();
    for name in [
        "spegel_mirror_requests_total",
        "spegel_mirror_last_success_timestamp_seconds",
        "spegel_resolve_duration_seconds",
        "spegel_advertised_image_tags",
        "spegel_advertised_image_digests",
        "spegel_advertised_content_digests",
        "http_request_duration_seconds",
        "http_response_size_bytes",
        "http_requests_inflight",
    ] {
        // The Prometheus text format, as Spegel serves it: counters keep `_total` in `# TYPE`.
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
        assert!(
            text.contains(&format!("\n{name}")),
            "{name} has no sample:\n{text}"
        );
    }
    assert!(
        text.contains(r#"spegel_advertised_image_tags{registry="example.com"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"http_request_duration_seconds_count{handler="/v2/*",method="GET",code="200"} 1"#
        ),
        "{text}"
    );

    let g = get(metrics_addr, "/debug/web/").await;
    assert_eq!(g.status, StatusCode::OK);
    let html = String::from_utf8(g.bytes().to_vec()).unwrap();
    assert!(html.contains("<form id=\"measure\""));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external resources"
    );

    let g = get(metrics_addr, "/debug/web/metadata").await;
    assert_eq!(
        g.json(),
        serde_json::json!({"libp2p": {"id": "12D3KooWTest"}})
    );

    let g = get(metrics_addr, "/debug/web/api/state").await;
    let state = g.json();
    assert_eq!(state["images"][0]["name"], "example.com/test/app:v1");
    assert_eq!(state["storeConnected"], true);

    let measure = "/debug/web/api/measure?image=example.com%2Ftest%2Fapp%3Av1";
    // Not a GET: a link or an image on another site cannot start a pull.
    let g = get(metrics_addr, measure).await;
    assert_eq!(g.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(g.header("allow"), Some("POST"));
    // A browser request from another origin is refused.
    for headers in [
        &[("origin", "http://evil.example")][..],
        &[("sec-fetch-site", "cross-site")][..],
        &[("origin", "null")][..],
    ] {
        let g = post(metrics_addr, measure, headers).await;
        assert_eq!(g.status, StatusCode::FORBIDDEN, "{headers:?}");
        assert!(g.json()["error"].as_str().unwrap().contains("another"));
    }
    // From the page itself (same origin), it runs.
    let origin = format!("http://{metrics_addr}");
    let g = post(
        metrics_addr,
        measure,
        &[("origin", &origin), ("sec-fetch-site", "same-origin")],
    )
    .await;
    assert_eq!(g.status, StatusCode::OK, "{g:?}");
    let m = g.json();
    let blobs = m["blobs"].as_array().unwrap();
    assert_eq!(blobs.len(), 2, "{m}");
    for b in blobs {
        assert_eq!(b["source"], "local");
        assert_eq!(b["status"], 200);
    }
    assert_eq!(blobs[1]["digest"], layer.as_str());
    assert_eq!(blobs[1]["size"], 1_000_000);

    let g = post(metrics_addr, "/debug/web/api/measure?image=%%%", &[]).await;
    assert_eq!(g.status, StatusCode::BAD_REQUEST);

    // One at a time: while one measurement is reading a blob (held at the store's gate),
    // another is told to wait; once the first is done, the next runs again.
    let gate = source.hold();
    let first = tokio::spawn(post(metrics_addr, measure, &[]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while source.waiting() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the measurement never read a blob"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // (A second one that ran would wait at the gate too: bounded, so that is a failure.)
    let second = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        post(metrics_addr, measure, &[]),
    )
    .await
    .expect("a second measurement ran while one was running");
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS, "{second:?}");
    gate.send_replace(true);
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(
        post(metrics_addr, measure, &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(metrics_addr, "/nothing").await.status,
        StatusCode::NOT_FOUND
    );
    task.abort();
}

#[tokio::test]
async fn measure_works_with_basic_auth_on() {
    let source = Arc::new(FakeContentStore::default());
    let config_bytes = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config = source.put(config_bytes.clone());
    let manifest = source.put(format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{}}},"layers":[]}}"#,
        config_bytes.len()
    ));
    source.tag("example.com/test/auth:v1", &manifest);
    let creds = speil_http::auth::Credentials::new("user", "pass").unwrap();
    let mut ls = listeners(32, 2).await;
    let metrics_listener = ls.pop().unwrap();
    let metrics_addr = metrics_listener.local_addr().unwrap();
    let node = start_node(
        1,
        ls.pop().unwrap(),
        Arc::new(FakeDht::default()),
        source.clone(),
        ServerConfig {
            credentials: Some(creds.clone()),
        },
    )
    .await;
    let service = MetricsService::new(
        node.handle.shared().clone(),
        source,
        Tokio,
        DebugConfig {
            enabled: true,
            peer_id: "12D3KooWTest".into(),
            registry: node.addr,
            credentials: Some(creds),
        },
    );
    let task = tokio::spawn(async move {
        speil_http::Server::new(Tokio)
            .serve(metrics_listener, service)
            .await
    });
    eventually(|| node.handle.shared().store_connected()).await;
    let g = post(
        metrics_addr,
        "/debug/web/api/measure?image=example.com%2Ftest%2Fauth%3Av1",
        &[],
    )
    .await;
    assert_eq!(g.status, StatusCode::OK, "{g:?}");
    let m = g.json();
    let blobs = m["blobs"].as_array().unwrap();
    assert_eq!(blobs.len(), 1, "{m}");
    assert_eq!(blobs[0]["status"], 200, "{m}");
    task.abort();
}
