//! Benchmarks against a peer in the same run (not timed tests): on a two-node cluster of this
//! machine, the same 34 MiB layer is fetched from the upstream `docker-registry`, from speil
//! serving it from its own node's containerd, and from speil mirroring it from the other node;
//! and the resident memory of speil and of `docker-registry` is read before and after.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use speil_tests::cluster::{Cluster, wait_findable};
use speil_tests::images;

/// Fetches `path` and discards the body; returns its length. Fails on a non-200 status or a
/// body shorter than `Content-Length`.
fn fetch(addr: SocketAddr, path: &str) -> Result<u64> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut head = Vec::new();
    let body_start;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            bail!("connection closed in the headers");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            body_start = i + 4;
            break;
        }
    }
    let text = String::from_utf8_lossy(&head[..body_start]).to_string();
    if !text.starts_with("HTTP/1.1 200") {
        bail!("{path}: {}", text.lines().next().unwrap_or(""));
    }
    let length: u64 = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .context("no Content-Length")?;
    let mut got = (head.len() - body_start) as u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    if got != length {
        bail!("{path}: {got} of {length} bytes");
    }
    Ok(got)
}

/// Median throughput in MiB/s over `rounds` fetches.
fn throughput(addr: SocketAddr, path: &str, rounds: usize) -> Result<f64> {
    let mut speeds = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let n = fetch(addr, path)?;
        speeds.push(n as f64 / f64::from(1u32 << 20) / t.elapsed().as_secs_f64());
    }
    speeds.sort_by(f64::total_cmp);
    Ok(speeds[speeds.len() / 2])
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
fn rss(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<f64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("{name} missing"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .context("malformed")?
            .parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let image = images::large()?;
    let c = Cluster::start(2)?;
    std::thread::sleep(Duration::from_secs(2));
    let speil_pids: Vec<u32> = c.speils.iter().filter_map(|s| s.pid()).collect();
    let registry_pid = c.h.registry.pid().context("registry pid")?;
    let idle: Vec<(f64, f64)> = speil_pids.iter().map(|p| rss(*p)).collect::<Result<_>>()?;
    let reg = c.registry();
    c.h.registry.push(image)?;
    c.h.nodes[0].cri_pull(&image.reference(&reg)).await?;
    wait_findable(&c.speils[1], image, &reg, Duration::from_secs(10))?;
    let layer = &image.host_platform()?.layers[0];
    let size = image.sizes[layer];
    let path = format!("/v2/{}/blobs/{layer}", image.name);
    // Warm the page cache for all three.
    fetch(c.h.registry.addr(), &path)?;
    fetch(c.speils[0].registry_addr(), &path)?;
    let upstream = throughput(c.h.registry.addr(), &path, rounds)?;
    let local = throughput(c.speils[0].registry_addr(), &path, rounds)?;
    let mirrored = throughput(c.speils[1].registry_addr(), &path, rounds)?;
    let after: Vec<(f64, f64)> = speil_pids.iter().map(|p| rss(*p)).collect::<Result<_>>()?;
    let (reg_rss, reg_peak) = rss(registry_pid)?;

    println!(
        "blob: one {:.1} MiB layer, {rounds} sequential GETs each, median",
        size as f64 / f64::from(1u32 << 20)
    );
    println!("| served by | MiB/s | vs docker-registry |");
    println!("| --- | ---: | ---: |");
    println!("| docker-registry (upstream, filesystem storage) | {upstream:.0} | 1.00 |");
    println!(
        "| speil, local (node's containerd content store) | {local:.0} | {:.2} |",
        local / upstream
    );
    println!(
        "| speil, mirrored from the other node's speil | {mirrored:.0} | {:.2} |",
        mirrored / upstream
    );
    println!();
    println!("| process | RSS idle (MiB) | RSS after (MiB) | peak RSS (MiB) |");
    println!("| --- | ---: | ---: | ---: |");
    for (i, ((idle_rss, _), (after_rss, peak))) in idle.iter().zip(after.iter()).enumerate() {
        let role = if i == 0 {
            "serving locally"
        } else {
            "mirroring"
        };
        println!(
            "| speil registry, node {} ({role}) | {idle_rss:.1} | {after_rss:.1} | {peak:.1} |",
            i + 1
        );
    }
    println!("| docker-registry | – | {reg_rss:.1} | {reg_peak:.1} |");
    drop(c);
    Ok(())
}
