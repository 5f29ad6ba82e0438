//! speil run exactly as Spegel's Helm chart runs Spegel (`fixtures/spegel-chart/
//! rendered-default.yaml`): the `configuration` init container, the `registry` container and
//! the post-delete `cleanup` + `cleanup-wait` pair, with the chart's args and env, on a real
//! containerd 2.3.4, each in a pod-like sandbox ([`speil_tests::pod`]) with `$(NODE_IP)` an
//! IPv4 and an IPv6 address. Spegel's chart mounts neither `/etc/containerd` nor the host's
//! `/proc` into the registry container, so speil must start with a warning that it cannot
//! verify containerd's configuration.

use std::net::IpAddr;

use speil_tests::pod::{self, Lifecycle, Render, require_sandbox};
use speil_tests::{images, require_components};

fn spegel_render_on(node_ip: IpAddr, tag: &str) {
    if !require_components() || !require_sandbox() {
        return;
    }
    let render = Render::from_file(
        &speil_tests::containerd::shared_dir().join("fixtures/spegel-chart/rendered-default.yaml"),
    )
    .unwrap();
    // The node holds the image, pulled straight from the upstream before speil is installed,
    // and has a registry directory of its own (with a CA file) that cleanup must give back.
    let image = images::small().unwrap();
    let (h, upstream) = pod::node_holding(image).unwrap();
    let node = &h.nodes[0];
    std::fs::write(
        node.certs_dir().join(&upstream).join("ca.crt"),
        b"a CA the node had\n",
    )
    .unwrap();

    let work = h.dir().join("pod");
    std::fs::create_dir_all(&work).unwrap();
    let outcome = pod::lifecycle(Lifecycle {
        render: &render,
        node,
        upstream: &upstream,
        image,
        node_ip,
        tag,
        work: &work,
        secrets: Default::default(),
    })
    .unwrap();
    let target = match node_ip {
        IpAddr::V4(ip) => format!("http://{ip}:30020"),
        IpAddr::V6(ip) => format!("http://[{ip}]:30020"),
    };
    let hosts = &outcome.configured[std::path::Path::new("_default/hosts.toml")];
    assert!(hosts.contains(&format!("[host.'{target}']")), "{hosts}");
    assert!(
        outcome.registry_log.contains("cannot be verified"),
        "no warning that containerd's config could not be read: {}",
        outcome.registry_log
    );
}

#[test]
fn spegel_chart_args_run_speil_on_an_ipv4_node() {
    spegel_render_on("10.77.0.5".parse().unwrap(), "spegel-v4");
}

#[test]
fn spegel_chart_args_run_speil_on_an_ipv6_node() {
    spegel_render_on("fd00:77::5".parse().unwrap(), "spegel-v6");
}
