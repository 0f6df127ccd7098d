//! Registry performance: propagation time from a registration to every one
//! of 100 watchers seeing it (p50/p99), in process and over HTTP, and
//! registrations per second, in memory and with redb's fsync per write.
//!
//! ```sh
//! cargo run --release -p switchyard-discovery --example registry_bench
//! ```
//!
//! The figures are recorded in `docs/performance.md` under "Registry".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures_util::StreamExt;
use switchyard_discovery::registry::{
    EmbeddedRegistry, Registration, Registry, RemoteRegistry, WatchEventKind, http,
};
use tokio::{net::TcpListener, sync::mpsc, time::Instant};

const WATCHERS: usize = 100;

fn reg(i: usize) -> Registration {
    let port = 1 + (i % 60_000) as u16;
    let mut r = Registration::new(
        "bench",
        format!("i{i}"),
        SocketAddr::from(([127, 0, 0, 1], port)),
        "bench",
    );
    r.metadata.insert("zone".into(), "a".into());
    r
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Registers `changes` instances through `writer`, one at a time, and
/// measures how long until all `watchers` have seen each one.
async fn propagation(
    label: &str,
    writer: Arc<dyn Registry>,
    watchers: Vec<Arc<dyn Registry>>,
    changes: usize,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let start_revision = writer.list("bench").await.unwrap().revision;
    for watcher in &watchers {
        let mut events = watcher.watch("bench", Some(start_revision)).await.unwrap();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(event)) = events.next().await {
                if matches!(event.kind, WatchEventKind::Put { .. }) {
                    let _ = tx.send((event.revision, Instant::now()));
                }
            }
        });
    }
    let mut times = Vec::with_capacity(changes);
    let offset = start_revision as usize;
    for i in 0..changes {
        let t0 = Instant::now();
        let lease = writer.register(reg(offset + i)).await.unwrap();
        let mut seen = 0;
        let mut last = t0;
        while seen < watchers.len() {
            let (revision, at) = rx.recv().await.unwrap();
            assert_eq!(revision, lease.revision, "events arrive in order");
            seen += 1;
            last = last.max(at);
        }
        times.push(last - t0);
    }
    times.sort_unstable();
    println!(
        "| {label} | {changes} | {} | {} | {} | {} |",
        watchers.len(),
        ms(percentile(&times, 50)),
        ms(percentile(&times, 99)),
        ms(*times.last().unwrap()),
    );
}

/// Registrations per second from `concurrency` tasks.
async fn throughput(label: &str, registry: Arc<dyn Registry>, total: usize, concurrency: usize) {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency {
        let registry = Arc::clone(&registry);
        tasks.spawn(async move {
            for i in (t..total).step_by(concurrency) {
                registry.register(reg(1_000_000 + i)).await.unwrap();
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let elapsed = start.elapsed();
    println!(
        "| {label} | {concurrency} | {total} | {:.0} |",
        total as f64 / elapsed.as_secs_f64()
    );
}

async fn serve(registry: Arc<dyn Registry>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(http::serve(
        listener,
        http::router(registry),
        std::future::pending(),
    ));
    addr
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().unwrap();

    println!("| propagation | changes | watchers | p50 | p99 | max |");
    println!("| --- | --- | --- | --- | --- | --- |");
    let memory: Arc<dyn Registry> = Arc::new(EmbeddedRegistry::open(None).unwrap());
    let watchers = vec![Arc::clone(&memory); WATCHERS];
    propagation("in process, memory", Arc::clone(&memory), watchers, 2000).await;

    let disk: Arc<dyn Registry> =
        Arc::new(EmbeddedRegistry::open(Some(&dir.path().join("p.redb"))).unwrap());
    let watchers = vec![Arc::clone(&disk); WATCHERS];
    propagation("in process, redb", Arc::clone(&disk), watchers, 1000).await;

    let addr = serve(Arc::clone(&disk)).await;
    let url = format!("http://{addr}");
    let watchers: Vec<Arc<dyn Registry>> = (0..WATCHERS)
        .map(|_| Arc::new(RemoteRegistry::new(&url).unwrap()) as Arc<dyn Registry>)
        .collect();
    let writer: Arc<dyn Registry> = Arc::new(RemoteRegistry::new(&url).unwrap());
    propagation("HTTP (100 watch connections), redb", writer, watchers, 1000).await;

    println!();
    println!("| registrations | concurrency | total | per second |");
    println!("| --- | --- | --- | --- |");
    let memory: Arc<dyn Registry> = Arc::new(EmbeddedRegistry::open(None).unwrap());
    throughput("in process, memory", Arc::clone(&memory), 100_000, 1).await;
    let memory: Arc<dyn Registry> = Arc::new(EmbeddedRegistry::open(None).unwrap());
    throughput("in process, memory", memory, 100_000, 16).await;
    let disk: Arc<dyn Registry> =
        Arc::new(EmbeddedRegistry::open(Some(&dir.path().join("t1.redb"))).unwrap());
    throughput(
        "in process, redb (fsync per write)",
        Arc::clone(&disk),
        2000,
        1,
    )
    .await;
    let disk: Arc<dyn Registry> =
        Arc::new(EmbeddedRegistry::open(Some(&dir.path().join("t2.redb"))).unwrap());
    throughput(
        "in process, redb (fsync per write)",
        Arc::clone(&disk),
        2000,
        16,
    )
    .await;
    let memory: Arc<dyn Registry> = Arc::new(EmbeddedRegistry::open(None).unwrap());
    let addr = serve(memory).await;
    let client: Arc<dyn Registry> =
        Arc::new(RemoteRegistry::new(&format!("http://{addr}")).unwrap());
    throughput("HTTP, memory", Arc::clone(&client), 10_000, 16).await;
    let disk: Arc<dyn Registry> =
        Arc::new(EmbeddedRegistry::open(Some(&dir.path().join("t3.redb"))).unwrap());
    let addr = serve(disk).await;
    let client: Arc<dyn Registry> =
        Arc::new(RemoteRegistry::new(&format!("http://{addr}")).unwrap());
    throughput("HTTP, redb (fsync per write)", client, 2000, 16).await;
}
