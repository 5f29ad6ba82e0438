//! SPEC.md §2 over real HTTP: one node, its store in memory.

mod common;

use std::sync::Arc;

use common::*;
use http::{Method, StatusCode};
use speil_core::Digest;
use speil_http::server::ServerConfig;

struct Fixture {
    node: TestNode,
    manifest: Digest,
    config: Digest,
    layer: Digest,
    layer_bytes: bytes::Bytes,
}

fn manifest_json(config: &Digest, config_len: usize, layer: &Digest, layer_len: usize) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{config_len}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{layer}","size":{layer_len}}}]}}"#
    )
}

async fn fixture(net: u8, server: ServerConfig) -> Fixture {
    let source = Arc::new(FakeContentStore::default());
    let config_bytes = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config = source.put(config_bytes.clone());
    let layer_bytes = blob_bytes(200_000, 1);
    let layer = source.put(layer_bytes.clone());
    let manifest = source.put(manifest_json(
        &config,
        config_bytes.len(),
        &layer,
        layer_bytes.len(),
    ));
    source.tag("example.com/test/app:v1", &manifest);
    let l = listeners(net, 1).await.pop().unwrap();
    let node = start_node(1, l, Arc::new(FakeDht::default()), source, server).await;
    Fixture {
        node,
        manifest,
        config,
        layer,
        layer_bytes,
    }
}

fn error_code(g: &Got) -> String {
    assert_eq!(g.header("content-type"), Some("application/json"), "{g:?}");
    g.json()["errors"][0]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn ping_health_and_routes() {
    let f = fixture(1, ServerConfig { credentials: None }).await;
    let a = f.node.addr;
    assert_eq!(get(a, "/v2/").await.status, StatusCode::OK);
    assert_eq!(get(a, "/v2").await.status, StatusCode::OK);
    assert_eq!(get(a, "/livez").await.status, StatusCode::OK);
    eventually(|| f.node.handle.shared().store_connected()).await;
    assert_eq!(get(a, "/readyz").await.status, StatusCode::OK);
    let g = request(a, Method::HEAD, "/v2/", &[]).await.unwrap();
    assert_eq!(g.status, StatusCode::OK);

    let g = get(a, "/nope").await;
    assert_eq!(g.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&g), "NOT_FOUND");
    let g = request(a, Method::POST, "/v2/", &[]).await.unwrap();
    assert_eq!(g.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&g), "UNSUPPORTED");
    let path = format!("/v2/test/app/blobs/{}", f.layer);
    let g = request(a, Method::DELETE, &path, &[]).await.unwrap();
    assert_eq!(g.status, StatusCode::METHOD_NOT_ALLOWED);
    let g = request(a, Method::from_bytes(b"BREW").unwrap(), &path, &[])
        .await
        .unwrap();
    assert_eq!(g.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn manifests_by_tag_and_digest() {
    let f = fixture(2, ServerConfig { credentials: None }).await;
    let a = f.node.addr;
    let g = get(a, "/v2/test/app/manifests/v1?ns=example.com").await;
    assert_eq!(g.status, StatusCode::OK, "{g:?}");
    assert_eq!(
        g.header("content-type"),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    assert_eq!(g.header("docker-content-digest"), Some(f.manifest.as_str()));
    assert_eq!(g.header("oci-namespace"), Some("example.com"));
    assert!(f.manifest.verifies(g.bytes()));
    assert_eq!(
        g.header("content-length").unwrap(),
        g.bytes().len().to_string()
    );

    // HEAD: same headers, no body.
    let h = request(
        a,
        Method::HEAD,
        "/v2/test/app/manifests/v1?ns=example.com",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.header("docker-content-digest"), Some(f.manifest.as_str()));
    assert_eq!(h.header("content-length"), g.header("content-length"));
    assert!(h.bytes().is_empty());

    // By digest, with and without ns.
    let g = get(
        a,
        &format!("/v2/test/app/manifests/{}?ns=example.com", f.manifest),
    )
    .await;
    assert_eq!(g.status, StatusCode::OK);
    let g = get(a, &format!("/v2/test/app/manifests/{}", f.manifest)).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.header("oci-namespace"), None);

    // A tag without ns: 400 saying so.
    let g = get(a, "/v2/test/app/manifests/v1").await;
    assert_eq!(g.status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&g), "UNSUPPORTED");
    assert!(
        g.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("ns")
    );

    // A manifest request for a blob that is not a manifest.
    let g = get(
        a,
        &format!("/v2/test/app/manifests/{}?ns=example.com", f.layer),
    )
    .await;
    assert_eq!(g.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&g), "MANIFEST_UNKNOWN");
    // A blob request for a manifest digest is served.
    let g = get(a, &format!("/v2/test/app/blobs/{}", f.manifest)).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.header("content-type"), Some("application/octet-stream"));

    // An unknown tag (no peers): 404 that says why.
    let g = get(a, "/v2/test/app/manifests/v2?ns=example.com").await;
    assert_eq!(g.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&g), "MANIFEST_UNKNOWN");
    let msg = g.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("could not find peer"), "{msg}");
}

#[tokio::test]
async fn blobs_ranges_and_head() {
    let f = fixture(3, ServerConfig { credentials: None }).await;
    let a = f.node.addr;
    let path = format!("/v2/test/app/blobs/{}", f.layer);
    let g = get(a, &path).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.bytes(), &f.layer_bytes);
    assert_eq!(g.header("accept-ranges"), Some("bytes"));
    assert_eq!(g.header("docker-content-digest"), Some(f.layer.as_str()));
    assert_eq!(g.header("content-length"), Some("200000"));

    let h = request(a, Method::HEAD, &path, &[]).await.unwrap();
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.header("content-length"), Some("200000"));
    assert!(h.bytes().is_empty());

    let g = request(a, Method::GET, &path, &[("range", "bytes=10-19")])
        .await
        .unwrap();
    assert_eq!(g.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(g.header("content-range"), Some("bytes 10-19/200000"));
    assert_eq!(g.bytes(), &f.layer_bytes.slice(10..20));

    let g = request(a, Method::GET, &path, &[("range", "bytes=199990-")])
        .await
        .unwrap();
    assert_eq!(g.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(g.bytes(), &f.layer_bytes.slice(199_990..));

    let g = request(a, Method::GET, &path, &[("range", "bytes=-5")])
        .await
        .unwrap();
    assert_eq!(
        g.header("content-range"),
        Some("bytes 199995-199999/200000")
    );
    assert_eq!(g.bytes(), &f.layer_bytes.slice(199_995..));

    // End clamped.
    let g = request(a, Method::GET, &path, &[("range", "bytes=199999-500000")])
        .await
        .unwrap();
    assert_eq!(g.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        g.header("content-range"),
        Some("bytes 199999-199999/200000")
    );

    // Start past the end: 416 with the size.
    let g = request(a, Method::GET, &path, &[("range", "bytes=200000-")])
        .await
        .unwrap();
    assert_eq!(g.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(g.header("content-range"), Some("bytes */200000"));
    assert_eq!(error_code(&g), "RANGE_INVALID");
    // Several ranges, garbage: 416.
    for bad in ["bytes=0-1,5-6", "bytes=x-y", "items=0-1", "bytes=5-1"] {
        let g = request(a, Method::GET, &path, &[("range", bad)])
            .await
            .unwrap();
        assert_eq!(g.status, StatusCode::RANGE_NOT_SATISFIABLE, "{bad}");
    }

    // The config blob by digest without ns.
    let g = get(a, &format!("/v2/test/app/blobs/{}", f.config)).await;
    assert_eq!(g.status, StatusCode::OK);
    assert!(f.config.verifies(g.bytes()));

    // An unknown blob.
    let unknown = Digest::sha256_of(b"nothing");
    let g = get(a, &format!("/v2/test/app/blobs/{unknown}")).await;
    assert_eq!(g.status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&g), "BLOB_UNKNOWN");
}

#[tokio::test]
async fn malformed_input_gets_4xx() {
    let f = fixture(4, ServerConfig { credentials: None }).await;
    let a = f.node.addr;
    let cases: &[(&str, StatusCode, &str)] = &[
        (
            "/v2/test/app/blobs/sha256:zz",
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "/v2/test/app/blobs/md5:abc",
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "/v2/Test/app/manifests/v1?ns=example.com",
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "/v2/test/app/manifests/-bad?ns=example.com",
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
        ),
        (
            "/v2/test/app/manifests/v1?ns=%zz",
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        ("/v2/test/app/tags/list", StatusCode::NOT_FOUND, "NOT_FOUND"),
        ("/v2/test/app/blobs/", StatusCode::NOT_FOUND, "NOT_FOUND"),
        ("/v2//blobs/sha256:00", StatusCode::NOT_FOUND, "NOT_FOUND"),
    ];
    for (path, status, code) in cases {
        let g = get(a, path).await;
        assert_eq!(g.status, *status, "{path}: {g:?}");
        assert_eq!(error_code(&g), *code, "{path}");
    }
    // A path of more than 4 KiB.
    let long = format!("/v2/{}/blobs/sha256:00", "a/".repeat(2100));
    let g = get(a, &long).await;
    assert_eq!(g.status, StatusCode::URI_TOO_LONG);
    // Headers of more than 16 KiB: refused by the parser (OCI error) or by hyper.
    let big = "x".repeat(20 * 1024);
    let g = request(a, Method::GET, "/v2/", &[("x-big", &big)])
        .await
        .unwrap();
    assert_eq!(g.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let huge = "x".repeat(100 * 1024);
    match request(a, Method::GET, "/v2/", &[("x-huge", &huge)]).await {
        Ok(g) => assert_eq!(g.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        // hyper may close the connection while the client still writes.
        Err(e) => assert!(!e.is_empty()),
    }
    // The server still works.
    assert_eq!(get(a, "/v2/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn basic_auth_and_shutdown() {
    let creds = speil_http::auth::Credentials::new("user", "pass").unwrap();
    let f = fixture(
        5,
        ServerConfig {
            credentials: Some(creds.clone()),
        },
    )
    .await;
    let a = f.node.addr;
    let g = get(a, "/v2/").await;
    assert_eq!(g.status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&g), "UNAUTHORIZED");
    assert!(g.header("www-authenticate").is_some());
    let g = get(a, &format!("/v2/test/app/blobs/{}", f.layer)).await;
    assert_eq!(g.status, StatusCode::UNAUTHORIZED);
    let auth = creds.header().to_str().unwrap().to_owned();
    let g = request(
        a,
        Method::GET,
        &format!("/v2/test/app/blobs/{}", f.layer),
        &[("authorization", &auth)],
    )
    .await
    .unwrap();
    assert_eq!(g.status, StatusCode::OK);
    // Health checks need no credentials.
    assert_eq!(get(a, "/livez").await.status, StatusCode::OK);

    f.node.handle.shared().shutdown();
    let g = request(a, Method::GET, "/v2/", &[("authorization", &auth)])
        .await
        .unwrap();
    assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn blobs_from_files() {
    let f = fixture(6, ServerConfig { credentials: None }).await;
    f.node.source.set_behaviour(Behaviour::File);
    let a = f.node.addr;
    let path = format!("/v2/test/app/blobs/{}", f.layer);
    let g = get(a, &path).await;
    assert_eq!(g.status, StatusCode::OK);
    assert_eq!(g.bytes(), &f.layer_bytes);
    let g = request(a, Method::GET, &path, &[("range", "bytes=65530-131080")])
        .await
        .unwrap();
    assert_eq!(g.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(g.bytes(), &f.layer_bytes.slice(65_530..131_081));
}
