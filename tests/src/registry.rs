//! An upstream `docker-registry` (CNCF distribution) on a free `127.0.0.1` port.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::http;
use crate::images::TestImage;

/// A running registry, stopped on drop.
pub struct Registry {
    addr: SocketAddr,
    /// The name image references use, when not the address (`registry.test:5000`).
    name: Option<String>,
    /// The network namespace it runs in (`None`: this one).
    netns: Option<String>,
    dir: PathBuf,
    child: Option<Child>,
}

fn free_port(ip: Ipv4Addr) -> Result<u16> {
    let l = TcpListener::bind((ip, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Registry {
    /// Starts a registry storing into `dir` (created). Call [`Registry::wait_ready`] next.
    pub fn spawn(dir: &Path) -> Result<Registry> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)?));
        Registry::spawn_at(dir, addr, addr.to_string(), None, None)
    }

    /// Starts a registry inside network namespace `netns`, listening on `listen` (e.g.
    /// `:5000`, all interfaces of both families), reached by the test at `addr` and named
    /// `name` (`host:port`, resolved through the namespaces' hosts files) in image references.
    /// Call [`Registry::wait_ready`] next.
    pub fn spawn_in(
        dir: &Path,
        netns: &str,
        listen: &str,
        addr: SocketAddr,
        name: &str,
    ) -> Result<Registry> {
        Registry::spawn_at(
            dir,
            addr,
            listen.to_owned(),
            Some(name.to_owned()),
            Some(netns.to_owned()),
        )
    }

    fn spawn_at(
        dir: &Path,
        addr: SocketAddr,
        listen: String,
        name: Option<String>,
        netns: Option<String>,
    ) -> Result<Registry> {
        std::fs::create_dir_all(dir.join("storage"))?;
        let config = format!(
            "version: 0.1\n\
             log:\n  level: error\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: \"{listen}\"\n",
            dir.join("storage").display()
        );
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = crate::netns::command(netns.as_deref(), "docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        Ok(Registry {
            addr,
            name,
            netns,
            dir: dir.to_path_buf(),
            child: Some(child),
        })
    }

    /// Starts a registry and waits until it answers, on a new port when the one picked was
    /// taken meanwhile.
    pub fn start(dir: &Path, timeout: Duration) -> Result<Registry> {
        let mut attempt = 0;
        loop {
            let mut registry = Registry::spawn(dir)?;
            match registry.wait_ready(timeout) {
                Ok(()) => return Ok(registry),
                Err(_) if attempt < 3 && registry.port_was_taken() => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the registry failed because its port was taken.
    pub fn port_was_taken(&self) -> bool {
        self.log().contains("address already in use")
    }

    /// Waits until `GET /v2/` answers 200.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("docker-registry exited with {status}: {}", self.log());
            }
            if let Ok(resp) = self.request("GET", "/v2/", &[])
                && resp.status == 200
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry not ready after {timeout:?}: {}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The registry host as image references spell it, `127.0.0.1:<port>` (or its name).
    pub fn host(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.addr.to_string())
    }

    /// An HTTP request to the registry (from inside its namespace when it has one).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<http::Response> {
        crate::netns::request(self.netns.as_deref(), self.addr, method, path, headers)
    }

    /// The registry process's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Pushes a test image (all platforms) with `skopeo`, preserving digests.
    pub fn push(&self, image: &TestImage) -> Result<()> {
        let out = crate::netns::command(self.netns.as_deref(), "skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--all",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci:{}:{}", image.layout.display(), image.tag))
            .arg(format!(
                "docker://{}/{}:{}",
                self.host(),
                image.name,
                image.tag
            ))
            .stdin(Stdio::null())
            .output()
            .context("running skopeo")?;
        if !out.status.success() {
            bail!(
                "skopeo copy of {} failed: {}",
                image.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// The bytes the registry serves for a blob or, when the registry keeps it as a
    /// manifest (distribution does not serve manifests under `/blobs/`), for that manifest.
    pub fn blob(&self, repository: &str, digest: &speil_core::Digest) -> Result<Vec<u8>> {
        let resp = self.request("GET", &format!("/v2/{repository}/blobs/{digest}"), &[])?;
        if resp.status == 200 {
            return Ok(resp.body);
        }
        let accept = "application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.oci.image.index.v1+json, \
                      application/vnd.docker.distribution.manifest.v2+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json";
        let resp = self.request(
            "GET",
            &format!("/v2/{repository}/manifests/{digest}"),
            &[("Accept", accept)],
        )?;
        if resp.status != 200 {
            bail!(
                "{repository}@{digest}: neither blob nor manifest (status {})",
                resp.status
            );
        }
        Ok(resp.body)
    }

    /// Stops the registry (SIGKILL, then reaps it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
