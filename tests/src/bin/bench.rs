//! Benchmarks against peers measured in the same run (not timed tests). For each speil build
//! given (`--speil NAME=PATH`, e.g. this commit's `speil`, `speil-smol`, an older commit's
//! build), a two-node cluster of this machine; the same ~33 MiB layer is fetched from the
//! upstream `docker-registry`, from each build serving it from its own node's containerd
//! (local) and from each build mirroring it from its other node (peer), with two clients:
//! the bench's own (below) and `curl`. Runs alternate: every run fetches from every server
//! with both clients, the server order rotating by one each run and the client order
//! alternating; medians over the runs. Resident memory of every speil and of
//! `docker-registry` is sampled after each run.
//!
//! A build that cannot run is reported absent, not a failure: one whose `version` fails (as
//! `speil-smol` did while it only said it was not available), or whose cluster does not
//! start. Bounded in time (`BENCH_BUDGET_SECS`,
//! and every fetch has its own deadline); on SIGTERM or SIGINT it stops after the fetch in
//! progress, prints what it measured and stops every process it started (by PID: each
//! cluster's drop).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use speil_tests::cluster::{Cluster, wait_findable};
use speil_tests::images;
use speil_tests::speil::Build;

const MIB: f64 = (1u32 << 20) as f64;
/// The longest one fetch may take (both clients).
const FETCH_LIMIT: Duration = Duration::from_secs(60);

/// Fetches `path` and discards the body; returns its length. Fails on a non-200 status or a
/// body shorter than `Content-Length`. One connection per fetch (`Connection: close`),
/// reads of up to 256 KiB.
fn fetch(addr: SocketAddr, path: &str) -> Result<u64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
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

/// The two clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// [`fetch`], timed from connect to the last byte.
    Bench,
    /// `curl -s -o /dev/null -w '%{speed_download}'` (curl's own timing).
    Curl,
}

impl Client {
    const ALL: [Client; 2] = [Client::Bench, Client::Curl];

    fn name(self) -> &'static str {
        match self {
            Client::Bench => "bench client",
            Client::Curl => "curl",
        }
    }

    /// One fetch of `size` bytes; MiB/s.
    fn measure(self, addr: SocketAddr, path: &str, size: u64) -> Result<f64> {
        match self {
            Client::Bench => {
                let t = Instant::now();
                let n = fetch(addr, path)?;
                if n != size {
                    bail!("{path}: {n} bytes, expected {size}");
                }
                Ok(n as f64 / MIB / t.elapsed().as_secs_f64())
            }
            Client::Curl => curl(addr, path, size),
        }
    }
}

/// `curl` reading as a standard client does; its `speed_download` (bytes/s) in MiB/s. The
/// status and the size are checked too.
fn curl(addr: SocketAddr, path: &str, size: u64) -> Result<f64> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time"])
        .arg(FETCH_LIMIT.as_secs().to_string())
        .args(["-w", "%{http_code} %{size_download} %{speed_download}"])
        .arg(format!("http://{addr}{path}"))
        .stdin(Stdio::null())
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [code, got, speed] = fields[..] else {
        bail!("curl printed {text:?} ({})", out.status);
    };
    if !out.status.success() || code != "200" || got.parse::<u64>().ok() != Some(size) {
        bail!(
            "curl {path}: status {code}, {got} of {size} bytes ({})",
            out.status
        );
    }
    Ok(speed.parse::<f64>().context("curl speed")? / MIB)
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

fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn spread(values: &[f64]) -> Option<(f64, f64)> {
    let min = values.iter().copied().reduce(f64::min)?;
    let max = values.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

/// Runs `binary version` (at most 10 s): its first line and the build (`runtime smol` in it:
/// the smol build), or why it cannot run.
fn probe(binary: &PathBuf) -> std::result::Result<(String, Build), String> {
    let mut child = Command::new(binary)
        .arg("version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("`version` did not exit within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let first = |s: &str| s.lines().next().unwrap_or("").trim().to_owned();
    if status.success() {
        let line = first(&out);
        let build = if line.contains("runtime smol") {
            Build::Smol
        } else {
            Build::Tokio
        };
        Ok((line, build))
    } else {
        Err(format!("{status}: {}", first(&err)))
    }
}

/// One speil build and, when it runs, its cluster.
struct Candidate {
    name: String,
    state: std::result::Result<Running, String>,
}

struct Running {
    version: String,
    cluster: Cluster,
    pids: [u32; 2],
    idle: [f64; 2],
    /// RSS after each run, per node.
    after: [Vec<f64>; 2],
}

/// A server measured: docker-registry, or one build's local or peer path.
struct Target {
    label: String,
    addr: SocketAddr,
    speeds: [Vec<f64>; 2],
    errors: Vec<String>,
}

fn main() -> Result<()> {
    let mut builds_wanted = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let spec = match a.strip_prefix("--speil=") {
            Some(v) => v.to_owned(),
            None if a == "--speil" => args.next().context("--speil needs NAME=PATH")?,
            None => bail!("usage: bench [--speil NAME=PATH]…  (unknown argument {a:?})"),
        };
        let (name, path) = spec.split_once('=').context("--speil needs NAME=PATH")?;
        builds_wanted.push((name.to_owned(), PathBuf::from(path)));
    }
    if builds_wanted.is_empty() {
        builds_wanted.push(("speil".to_owned(), speil_tests::speil::binary()?));
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let budget = Duration::from_secs(
        std::env::var("BENCH_BUDGET_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(420),
    );
    let started = Instant::now();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        rt.spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("bench: signal received, stopping after the current fetch");
            stop.store(true, Ordering::SeqCst);
        });
    }
    let stopped = || stop.load(Ordering::SeqCst);

    let image = images::large()?;
    let layer = image.host_platform()?.layers[0].clone();
    let size = image.sizes[&layer];
    let path = format!("/v2/{}/blobs/{layer}", image.name);

    // One two-node cluster per build that runs, each on its own address block and ports.
    let mut builds: Vec<Candidate> = Vec::new();
    for (name, binary) in builds_wanted {
        if stopped() {
            break;
        }
        let state = match probe(&binary) {
            Err(why) => Err(why),
            Ok((version, build)) => {
                start_cluster(&rt, build, &binary, image).map(|(cluster, pids, idle)| Running {
                    version,
                    cluster,
                    pids,
                    idle,
                    after: [Vec::new(), Vec::new()],
                })
            }
        };
        if let Err(why) = &state {
            eprintln!("bench: {name} is absent: {why}");
        }
        builds.push(Candidate { name, state });
    }
    let Some(reference) = builds.iter().find_map(|b| b.state.as_ref().ok()) else {
        bail!("no speil build could run");
    };
    let registry_pid = reference.cluster.h.registry.pid().context("registry pid")?;

    let mut targets = vec![Target {
        label: "docker-registry (upstream, filesystem storage)".into(),
        addr: reference.cluster.h.registry.addr(),
        speeds: [Vec::new(), Vec::new()],
        errors: Vec::new(),
    }];
    for b in &builds {
        if let Ok(r) = &b.state {
            for (node, how) in [(0, "local"), (1, "peer")] {
                targets.push(Target {
                    label: format!("{}, {how}", b.name),
                    addr: r.cluster.speils[node].registry_addr(),
                    speeds: [Vec::new(), Vec::new()],
                    errors: Vec::new(),
                });
            }
        }
    }
    // Warm the page cache and every path once.
    for t in &targets {
        fetch(t.addr, &path).with_context(|| format!("warming {}", t.label))?;
    }

    let mut registry_rss = Vec::new();
    let mut runs = 0;
    'runs: for run in 0..rounds {
        if started.elapsed() > budget {
            eprintln!("bench: time budget of {budget:?} spent after {runs} runs");
            break;
        }
        let n = targets.len();
        for k in 0..n {
            let t = &mut targets[(run + k) % n];
            let clients = if run % 2 == 0 {
                Client::ALL
            } else {
                [Client::ALL[1], Client::ALL[0]]
            };
            for client in clients {
                if stopped() {
                    break 'runs;
                }
                match client.measure(t.addr, &path, size) {
                    Ok(speed) => t.speeds[client as usize].push(speed),
                    Err(e) => t.errors.push(format!("{}: {e:#}", client.name())),
                }
            }
        }
        runs += 1;
        for r in builds.iter_mut().filter_map(|b| b.state.as_mut().ok()) {
            for (pid, samples) in r.pids.iter().zip(&mut r.after) {
                if let Ok((now, _)) = rss(*pid) {
                    samples.push(now);
                }
            }
        }
        if let Ok((now, _)) = rss(registry_pid) {
            registry_rss.push(now);
        }
    }

    // Report.
    println!(
        "blob: one {:.1} MiB layer; median (min–max) of {runs} alternating runs, server order \
         rotating, client order alternating; {:.0} s",
        size as f64 / MIB,
        started.elapsed().as_secs_f64()
    );
    println!("builds:");
    for b in &builds {
        match &b.state {
            Ok(r) => println!("- {}: {}", b.name, r.version),
            Err(why) => println!("- {}: absent ({why})", b.name),
        }
    }
    println!();
    let upstream: Vec<Option<f64>> = Client::ALL
        .iter()
        .map(|c| median(&targets[0].speeds[*c as usize]))
        .collect();
    print!("| server ");
    for c in Client::ALL {
        print!("| {} MiB/s | vs docker-registry ", c.name());
    }
    println!("|");
    println!("| --- {}|", "| ---: | ---: ".repeat(Client::ALL.len()));
    for t in &targets {
        print!("| {} ", t.label);
        for c in Client::ALL {
            let s = &t.speeds[c as usize];
            match (median(s), spread(s)) {
                (Some(m), Some((lo, hi))) => {
                    let ratio =
                        upstream[c as usize].map_or("–".into(), |u| format!("{:.2}", m / u));
                    print!("| {m:.0} ({lo:.0}–{hi:.0}) | {ratio} ");
                }
                _ => print!("| – | – "),
            }
        }
        println!("|");
    }
    for b in builds.iter().filter(|b| b.state.is_err()) {
        println!("| {} | absent | | absent | |", b.name);
    }
    for t in targets.iter().filter(|t| !t.errors.is_empty()) {
        println!(
            "\n{}: {} failed fetches, first: {}",
            t.label,
            t.errors.len(),
            t.errors[0]
        );
    }
    println!();
    println!("| process | RSS idle (MiB) | RSS after each run, median (MiB) | peak RSS (MiB) |");
    println!("| --- | ---: | ---: | ---: |");
    for b in &builds {
        if let Ok(r) = &b.state {
            let roles = ["serving locally", "mirroring"];
            for (node, role) in roles.iter().enumerate() {
                let after = median(&r.after[node]).map_or("–".into(), |m| format!("{m:.1}"));
                let peak = rss(r.pids[node]).map_or("–".into(), |(_, p)| format!("{p:.1}"));
                println!(
                    "| {} node {} ({role}) | {:.1} | {after} | {peak} |",
                    b.name,
                    node + 1,
                    r.idle[node]
                );
            }
        }
    }
    let reg_after = median(&registry_rss).map_or("–".into(), |m| format!("{m:.1}"));
    let reg_peak = rss(registry_pid).map_or("–".into(), |(_, p)| format!("{p:.1}"));
    println!("| docker-registry | – | {reg_after} | {reg_peak} |");

    // Every cluster's drop stops its speils, containerds and registry by PID.
    drop(targets);
    drop(builds);
    Ok(())
}

/// A two-node cluster running `build` from `binary`, the image pulled on node 1 and
/// findable from node 2; its speils' PIDs and idle RSS.
fn start_cluster(
    rt: &tokio::runtime::Runtime,
    build: Build,
    binary: &std::path::Path,
    image: &'static speil_tests::TestImage,
) -> std::result::Result<(Cluster, [u32; 2], [f64; 2]), String> {
    let go = || -> Result<(Cluster, [u32; 2], [f64; 2])> {
        let c = Cluster::start_binary(2, build, binary)?;
        std::thread::sleep(Duration::from_secs(2));
        let pid = |i: usize| c.speils[i].pid().context("speil pid");
        let pids = [pid(0)?, pid(1)?];
        let idle = [rss(pids[0])?.0, rss(pids[1])?.0];
        let reg = c.registry();
        c.h.registry.push(image)?;
        rt.block_on(c.h.nodes[0].cri_pull(&image.reference(&reg)))?;
        wait_findable(&c.speils[1], image, &reg, Duration::from_secs(20))?;
        Ok((c, pids, idle))
    };
    go().map_err(|e| summary(&format!("{e:#}")))
}

/// One line of why a cluster did not start: the panic message of a speil that panicked
/// (its log follows the error), else the error's first line.
fn summary(error: &str) -> String {
    let first = error.lines().next().unwrap_or("");
    let first = first.split(": {").next().unwrap_or(first);
    let mut lines = error.lines();
    match lines.find(|l| l.contains(" panicked at ")) {
        Some(_) => match lines.next() {
            Some(message) => format!("{first}: panicked: {}", message.trim()),
            None => first.to_owned(),
        },
        None => first.to_owned(),
    }
}
