//! Test harness: programmable loopback backends and the real `switchyard`
//! binary as a child process.

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::{
    convert::Infallible,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

/// How a backend answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 with a body naming the backend.
    Ok,
    /// 200 with JSON: `{"service": name, "uri": ..., "body": <request body>}`.
    Echo,
    /// This status, no body.
    Status(u16),
    /// 200 after this delay.
    Delay(Duration),
}

/// One request a backend received (health checks aside).
#[derive(Debug, Clone)]
pub struct Seen {
    /// Path and query as received.
    pub path: String,
    pub headers: http::HeaderMap,
}

/// A loopback HTTP backend that counts hits and can be told to fail, slow
/// down or die.
pub struct Backend {
    pub addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    mode: watch::Sender<Mode>,
    stop: watch::Sender<bool>,
}

impl Backend {
    pub async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let (mode, mode_rx) = watch::channel(Mode::Ok);
        let (stop, mut stop_rx) = watch::channel(false);
        let counter = hits.clone();
        let health = healthy.clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = seen.clone();
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                    _ = stop_rx.wait_for(|s| *s) => break,
                };
                let mode_rx = mode_rx.clone();
                let counter = counter.clone();
                let health = health.clone();
                let recorder = recorder.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let mode = *mode_rx.borrow();
                        let counter = counter.clone();
                        let healthy = health.load(Ordering::SeqCst);
                        let recorder = recorder.clone();
                        async move {
                            if req.uri().path() == "/healthz" {
                                let mut res =
                                    Response::new(Full::new(Bytes::from_static(if healthy {
                                        b"ok"
                                    } else {
                                        b"sick"
                                    })));
                                if !healthy {
                                    *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                                }
                                return Ok::<_, Infallible>(res);
                            }
                            counter.fetch_add(1, Ordering::SeqCst);
                            recorder.lock().unwrap().push(Seen {
                                path: req
                                    .uri()
                                    .path_and_query()
                                    .map_or("/".to_owned(), |pq| pq.as_str().to_owned()),
                                headers: req.headers().clone(),
                            });
                            let uri = req.uri().to_string();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            Ok(match mode {
                                Mode::Echo => {
                                    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                                    let json = serde_json::json!({ "service": name, "uri": uri, "body": body });
                                    Response::new(Full::new(Bytes::from(json.to_string())))
                                }
                                Mode::Ok => {
                                    let mut res = Response::new(Full::new(Bytes::from(name)));
                                    res.headers_mut().insert("x-backend", http::HeaderValue::from_static(name));
                                    res.headers_mut().insert("x-request-id", http::HeaderValue::from_static("the-backends"));
                                    res
                                }
                                Mode::Status(code) => {
                                    let mut res = Response::new(Full::new(Bytes::new()));
                                    *res.status_mut() = http::StatusCode::from_u16(code).unwrap();
                                    res
                                }
                                Mode::Delay(d) => {
                                    tokio::time::sleep(d).await;
                                    Response::new(Full::new(Bytes::from(name)))
                                }
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            // Dying means every open connection dies with the listener.
            conns.abort_all();
        });
        Backend {
            addr,
            hits,
            healthy,
            seen,
            mode,
            stop,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Every request received so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the backend received a request")
    }

    /// Makes `/healthz` answer 200 (`true`, the default) or 503 (`false`);
    /// other paths keep answering as the mode says.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Closes the listener and every connection: later connects are refused.
    pub fn kill(&self) {
        self.stop.send_replace(true);
    }
}

/// The real `switchyard` binary, serving a config written to a temp file.
pub struct Switchyard {
    child: Child,
    pub config: PathBuf,
    pub listener: SocketAddr,
    pub admin: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl Switchyard {
    pub fn start(config_text: &str) -> Switchyard {
        let dir = temp_dir("test");
        let config = dir.join("switchyard.toml");
        std::fs::write(&config, config_text).unwrap();
        Switchyard::start_file(config)
    }

    /// As [`start`](Self::start), with `TOKIO_WORKER_THREADS=workers`.
    pub fn start_with_workers(config_text: &str, workers: usize) -> Switchyard {
        let dir = temp_dir("test");
        let config = dir.join("switchyard.toml");
        std::fs::write(&config, config_text).unwrap();
        Switchyard::spawn(config, Some(workers))
    }

    /// Runs `switchyard serve -c config` on a config file already written
    /// (e.g. to start a killed process again with the same file and data).
    pub fn start_file(config: PathBuf) -> Switchyard {
        Switchyard::spawn(config, None)
    }

    fn spawn(config: PathBuf, workers: Option<usize>) -> Switchyard {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
        if let Some(workers) = workers {
            command.env("TOKIO_WORKER_THREADS", workers.to_string());
        }
        let mut child = command
            .args(["serve", "-c"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut listener, mut admin) = (None, None);
        while listener.is_none() || admin.is_none() {
            let line = lines
                .recv_timeout(Duration::from_secs(20))
                .expect("switchyard printed its addresses");
            if let Some(addr) = line.strip_prefix("switchyard: listener public on ") {
                listener = Some(addr.parse().unwrap());
            }
            if let Some(addr) = line.strip_prefix("switchyard: admin on ") {
                admin = Some(addr.parse().unwrap());
            }
        }
        Switchyard {
            child,
            config,
            listener: listener.unwrap(),
            admin: admin.unwrap(),
            lines,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listener)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait(&mut self) -> Option<i32> {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("switchyard did not exit within 10s");
    }

    /// Waits until stderr has printed a line containing `needle`.
    pub fn wait_for_line(&self, needle: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .expect("expected line");
            if line.contains(needle) {
                return line;
            }
        }
    }
}

impl Switchyard {
    /// Kills the process with SIGKILL (no shutdown, no deregistration) and
    /// reaps it.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Switchyard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh, empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-{tag}-{}-{}",
        std::process::id(),
        unique()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port that was free a moment ago, for a config that must name
/// its port (a process restarted on the same address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the `switchyard` binary with `args` and returns its output.
pub fn switchyard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("SWITCHYARD_REGISTRY")
        .output()
        .unwrap()
}

fn unique() -> usize {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends a request and returns status, headers and body.
pub async fn send(client: &HttpClient, method: &str, url: &str) -> (u16, http::HeaderMap, String) {
    send_with(client, method, url, &[]).await
}

/// Sends a request with extra headers and returns status, headers and body.
pub async fn send_with(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

pub async fn get(client: &HttpClient, url: &str) -> (u16, http::HeaderMap, String) {
    send(client, "GET", url).await
}

/// A config with one listener and one service with the given endpoints and
/// extra TOML for the service (policy, outlier...), routed at `/{*rest}`.
pub fn config(endpoints: &[SocketAddr], service_extra: &str) -> String {
    let endpoints: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[shutdown]
drain_timeout = "5s"

[services.app]
endpoints = [{}]
{service_extra}

[[routes]]
name = "all"
path = "/{{*rest}}"
service = "app"
"#,
        endpoints.join(", ")
    )
}

/// Sends `GET target` over a fresh connection exactly as written (no client
/// library normalizing the path) and returns the response status.
pub async fn raw_get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .unwrap_or_else(|| panic!("no status line for {target}: {text:?}"));
    status.parse().unwrap()
}
