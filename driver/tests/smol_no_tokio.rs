//! The smol runtime needs no tokio: inside its tasks there is no tokio runtime, and no tokio
//! worker thread exists in the process. (A test binary of its own: the tests of
//! `runtime.rs` start tokio runtimes in the same process.)

use std::net::Ipv4Addr;
use std::time::Duration;

use futures::{AsyncReadExt as _, AsyncWriteExt as _, FutureExt as _};
use speil_driver::smol::Smol;
use speil_driver::{Runtime, RuntimeExt};

/// The names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

#[test]
fn smol_tasks_run_without_tokio() {
    let rt = Smol::new();
    let inner = rt.clone();
    let (in_task, names) = rt.block_on(2, async move {
        // Exercise every part of the runtime first (timers, sockets, blocking work), so that
        // any thread they start exists when the threads are listed.
        inner.sleep(Duration::from_millis(10)).await;
        let listener = inner
            .listen(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
            .unwrap();
        let addr = inner.listener_addr(&listener).unwrap();
        let (accepted, connected) = futures::join!(inner.accept(&listener), inner.connect(addr));
        let (mut server, _) = accepted.unwrap();
        let mut client = connected.unwrap();
        client.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        server.read_exact(&mut one).await.unwrap();
        inner.spawn_blocking(|| ()).await.unwrap();

        let (tx, rx) = futures::channel::oneshot::channel();
        let rt = inner.clone();
        inner.spawn(
            async move {
                rt.sleep(Duration::from_millis(5)).await;
                let no_tokio = tokio::runtime::Handle::try_current().is_err();
                let thread = std::thread::current().name().map(str::to_owned);
                let _ = tx.send((no_tokio, thread, thread_names()));
            }
            .boxed(),
        );
        let (no_tokio, thread, names) = rx.await.unwrap();
        ((no_tokio, thread), names)
    });
    let (no_tokio, thread) = in_task;
    assert!(no_tokio, "a tokio runtime is current inside a smol task");
    // On an executor thread, or on the thread in `block_on` (it runs tasks too).
    let caller = std::thread::current().name().map(str::to_owned);
    assert!(
        thread
            .as_deref()
            .is_some_and(|t| t.starts_with("speil-smol-"))
            || thread == caller,
        "the task ran on {thread:?}"
    );
    assert!(
        names.iter().any(|n| n == "speil-smol-0"),
        "threads: {names:?}"
    );
    assert!(
        names.iter().any(|n| n == "speil-smol-1"),
        "threads: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("tokio-runtime-w")),
        "threads: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("tokio")),
        "threads: {names:?}"
    );
}
