//! A fake Kubernetes API server for the source's tests: a hyper 1.x HTTP/1.1 server on
//! 127.0.0.1:0 that replays recorded API objects from `agent/tests/fixtures/kubernetes/`.
//!
//! Per resource (named as in RBAC: `pods`, `peerauthentications.security.istio.io`) it serves
//! either a list response (a fixture file) or a 404 `Status` (CRD not installed), and a watch
//! stream (`?watch=true`) that writes queued newline-delimited watch events as the test pushes
//! them. A watch stream ends after an `ERROR` event, as the API server's does. Requests are
//! counted so tests can see relists.
use std::{
    collections::{HashMap, VecDeque},
    convert::Infallible,
    path::PathBuf,
    sync::Arc,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{Request, Response, StatusCode, body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::{
    net::TcpListener,
    sync::{Notify, mpsc},
    task::JoinHandle,
};

use super::kinds::{WATCHED, WatchedKind};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A fixture file's text.
pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kubernetes").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// The RBAC-style name of a watched kind: `pods`, `gateways.gateway.networking.k8s.io`.
pub fn resource_name(k: &WatchedKind) -> String {
    k.crd().unwrap_or_else(|| k.plural.to_string())
}

fn url_path(k: &WatchedKind) -> String {
    if k.group.is_empty() {
        format!("/api/{}/{}", k.version, k.plural)
    } else {
        format!("/apis/{}/{}/{}", k.group, k.version, k.plural)
    }
}

#[derive(Default)]
struct Resource {
    /// The list response body; `None` answers 404 (API not served).
    list: Option<String>,
    /// Answer every request with 500 (an API server that is up but failing).
    failing: bool,
    events: VecDeque<String>,
    lists: usize,
    watches: usize,
}

#[derive(Default)]
struct State {
    /// URL path -> resource.
    resources: Mutex<HashMap<String, Resource>>,
    /// Wakes watch streams when events are queued.
    pushed: Notify,
}

/// The running fake API server; stops when dropped.
pub struct FakeApi {
    pub url: String,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl FakeApi {
    /// Serves every watched kind's recorded list (`lists/<resource>.json`).
    pub async fn start() -> FakeApi {
        let state = Arc::new(State::default());
        {
            let mut res = state.resources.lock();
            for k in WATCHED {
                let list = fixture(&format!("lists/{}.json", resource_name(k)));
                res.insert(url_path(k), Resource { list: Some(list), ..Default::default() });
            }
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(&st, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeApi { url, state, task }
    }

    /// A kube client pointed at this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("url"));
        kube::Client::try_from(config).expect("client")
    }

    fn with<R>(&self, resource: &str, f: impl FnOnce(&mut Resource) -> R) -> R {
        let k = WATCHED.iter().find(|k| resource_name(k) == resource).expect("watched resource");
        let mut res = self.state.resources.lock();
        f(res.entry(url_path(k)).or_default())
    }

    /// Answers 404 for `resource` from now on (its CRD is not installed).
    pub fn absent(&self, resource: &str) {
        self.with(resource, |r| r.list = None);
    }

    /// Answers 500 for `resource` (it never syncs).
    pub fn failing(&self, resource: &str) {
        self.with(resource, |r| r.failing = true);
    }

    /// Serves `fixture` as the list response of `resource` from now on.
    pub fn set_list(&self, resource: &str, fixture_name: &str) {
        let text = fixture(fixture_name);
        self.with(resource, |r| r.list = Some(text));
    }

    /// Queues the watch events of a `.jsonl` fixture for `resource`'s watch stream.
    pub fn push(&self, resource: &str, fixture_name: &str) {
        let text = fixture(fixture_name);
        self.with(resource, |r| r.events.extend(text.lines().filter(|l| !l.is_empty()).map(str::to_string)));
        self.state.pushed.notify_waiters();
    }

    /// How many list requests `resource` has answered (404 and 500 included).
    pub fn lists(&self, resource: &str) -> usize {
        self.with(resource, |r| r.lists)
    }

    /// How many watch requests `resource` has answered.
    pub fn watches(&self, resource: &str) -> usize {
        self.with(resource, |r| r.watches)
    }

    /// Whether every queued event of `resource` has been written to a watch stream.
    pub fn drained(&self, resource: &str) -> bool {
        self.with(resource, |r| r.events.is_empty())
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn full(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}

fn handle(state: &Arc<State>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let watch = req.uri().query().unwrap_or("").split('&').any(|p| p == "watch=true" || p == "watch=1");
    let mut res = state.resources.lock();
    let Some(r) = res.get_mut(&path) else {
        return full(StatusCode::NOT_FOUND, fixture("status-404.json"));
    };
    if watch {
        r.watches += 1;
    } else {
        r.lists += 1;
    }
    if r.failing {
        let status = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"etcdserver: request timed out","reason":"InternalError","code":500}"#;
        return full(StatusCode::INTERNAL_SERVER_ERROR, status.to_string());
    }
    let Some(list) = r.list.clone() else {
        return full(StatusCode::NOT_FOUND, fixture("status-404.json"));
    };
    if !watch {
        return full(StatusCode::OK, list);
    }
    drop(res);
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let pushed = st.pushed.notified();
            let next = st.resources.lock().get_mut(&path).and_then(|r| r.events.pop_front());
            match next {
                Some(line) => {
                    let end = line.contains(r#""type":"ERROR""#);
                    if tx.send(Bytes::from(line + "\n")).await.is_err() || end {
                        return;
                    }
                }
                None => tokio::select! {
                    _ = pushed => {}
                    _ = tx.closed() => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(StreamBody::new(stream).boxed_unsync());
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    resp
}
