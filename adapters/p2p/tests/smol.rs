//! A cluster on smol alone: two nodes find each other and a lookup returns the provider, and
//! no tokio runtime exists anywhere in the process. (A test binary of its own: the other test
//! binaries start tokio runtimes.)

mod common;

use std::time::Duration;

use common::*;
use futures::FutureExt as _;
use speil_driver::Runtime;
use speil_driver::smol::Smol;

/// The names of this process's threads (`comm`, at most 15 bytes).
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

#[test]
fn two_nodes_on_smol_find_each_other() {
    let rt = Smol::new();
    let main = rt.clone();
    rt.block_on(2, async move {
        let rt = main;
        let (a, a_addr) = start(&rt, config(221, 0)).await;
        let mut cfg = config(222, 0);
        cfg.bootstrap = Some(static_to(&a, &a_addr));
        let (b, _) = start(&rt, cfg).await;
        assert!(
            wait_until(&rt, Duration::from_secs(15), || a.is_ready()
                && b.is_ready())
            .await,
            "the nodes did not join"
        );
        a.advertise(vec![key(1)]).unwrap();
        let found = find_provider(&rt, &b, &key(1), Duration::from_secs(15))
            .await
            .expect("b finds a as the provider of key 1");
        assert_eq!(found.peer, a.local_peer_id());
        assert_eq!(found.ips, vec![ip(221)]);

        // Asked from inside a task on the smol executor, while the nodes run.
        let (tx, rx) = futures::channel::oneshot::channel();
        rt.spawn(
            async move {
                let tokio_runtime = tokio::runtime::Handle::try_current().is_ok();
                let _ = tx.send((tokio_runtime, thread_names()));
            }
            .boxed(),
        );
        let (tokio_runtime, threads) = rx.await.unwrap();
        assert!(
            !tokio_runtime,
            "a tokio runtime is current inside a smol task"
        );
        assert!(
            !threads.iter().any(|t| t.starts_with("tokio")),
            "tokio threads exist: {threads:?}"
        );
        assert!(
            threads.iter().any(|t| t.starts_with("speil-smol-")),
            "{threads:?}"
        );
        a.shutdown();
        b.shutdown();
    });
}
