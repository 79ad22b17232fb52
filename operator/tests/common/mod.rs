//! Test doubles for the reconcile tests: a fake Kubernetes API server behind a
//! `tower_test` mock service, and a fake broker admin API.
//!
//! The fake API server keeps objects by path and answers the requests the controller makes
//! (GET, list with an equality label selector, server-side apply, merge patch, DELETE, POST of
//! Events). Every request is recorded. A request to a resource it does not know is answered 418
//! and recorded as unexpected; [`FakeApi::finish`] fails the test if there was any.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use txpipe_operator::broker_admin::{
    AdminFuture, BrokerAdmin, BrokerNodeStatus, StreamRaftStatus, VotersOutcome,
};
use txpipe_operator::{Error, Result};

/// Resources (plural, as in the URL) the fake serves; anything else is unexpected.
const KNOWN: &[&str] = &[
    "statefulsets",
    "deployments",
    "services",
    "configmaps",
    "poddisruptionbudgets",
    "horizontalpodautoscalers",
    "jobs",
    "servicemonitors",
    "customresourcedefinitions",
    "persistentvolumeclaims",
    "pods",
    "transactionpipelines",
    "events",
    "secrets",
    "certificates",
];

/// One request as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// HTTP method (`GET`, `PATCH`, ...).
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Decoded query parameters.
    pub query: BTreeMap<String, String>,
    /// `Content-Type` header.
    pub content_type: String,
    /// JSON body, if any.
    pub body: Option<Value>,
}

impl Recorded {
    /// A server-side apply (`PATCH` with `application/apply-patch+yaml`).
    pub fn is_apply(&self) -> bool {
        self.method == "PATCH" && self.content_type.starts_with("application/apply-patch")
    }
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    requests: Vec<Recorded>,
    unexpected: Vec<String>,
    /// `(method, path)` answered with this HTTP code (and not otherwise handled).
    failures: Vec<(String, String, u16)>,
}

/// The fake API server. Clone freely; all clones share the state.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

/// The `kube::Client` wired to a [`FakeApi`] plus the task serving it.
pub struct Server {
    /// Client whose requests the fake answers.
    pub client: kube::Client,
    task: JoinHandle<()>,
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {},
        "status": "Failure", "code": code, "reason": reason, "message": message,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

impl FakeApi {
    /// Starts serving a new `kube::Client` (default namespace `default`).
    pub fn serve(&self) -> Server {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let this = self.clone();
        let task = tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                let (code, body) = this.handle(req).await;
                send.send_response(
                    Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&body).expect("json")))
                        .expect("response"),
                );
            }
        });
        Server {
            client: kube::Client::new(svc, "default"),
            task,
        }
    }

    /// Stores `obj` at `path` (an object URL path without query).
    pub fn put(&self, path: &str, obj: Value) {
        self.state
            .lock()
            .unwrap()
            .objects
            .insert(path.to_string(), obj);
    }

    /// The object stored at `path`.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(path).cloned()
    }

    /// Removes the object at `path`.
    pub fn remove(&self, path: &str) {
        self.state.lock().unwrap().objects.remove(path);
    }

    /// Answers every `method` request on `path` with HTTP `code`.
    pub fn fail(&self, method: &str, path: &str, code: u16) {
        self.state
            .lock()
            .unwrap()
            .failures
            .push((method.into(), path.into(), code));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    /// Forgets the recorded requests (objects stay).
    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }

    /// Panics if an unexpected request was seen.
    pub fn assert_no_unexpected(&self) {
        let s = self.state.lock().unwrap();
        assert!(
            s.unexpected.is_empty(),
            "unexpected API requests: {:#?}",
            s.unexpected
        );
    }

    async fn handle(&self, req: Request<Body>) -> (u16, Value) {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let query = parse_query(req.uri().query());
        let content_type = req
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = req.into_body().collect_bytes().await.expect("request body");
        let body: Option<Value> = if bytes.is_empty() {
            None
        } else {
            Some(serde_json::from_slice(&bytes).expect("JSON request body"))
        };
        let rec = Recorded {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
        };
        let mut s = self.state.lock().unwrap();
        s.requests.push(rec);

        if let Some((_, _, code)) = s
            .failures
            .iter()
            .find(|(m, p, _)| *m == method && *p == path)
        {
            let code = *code;
            return (code, status(code, "InternalError", "injected failure"));
        }

        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        // Resource plural: the segment after `namespaces/<ns>` or, for cluster-scoped
        // `/apis/<g>/<v>/<plural>[/<name>]`, the fourth one.
        let ns_pos = segs.iter().position(|s| *s == "namespaces");
        let (plural, name, sub) = match ns_pos {
            Some(i) => (
                segs.get(i + 2).copied(),
                segs.get(i + 3).copied(),
                segs.get(i + 4).copied(),
            ),
            None => (
                segs.get(3).copied(),
                segs.get(4).copied(),
                segs.get(5).copied(),
            ),
        };
        let Some(_plural) = plural.filter(|p| KNOWN.contains(p)) else {
            s.unexpected.push(format!("{method} {path}"));
            return (
                418,
                status(418, "Unexpected", "the fake does not serve this"),
            );
        };
        let obj_path = match sub {
            Some(_) => path
                .rsplit_once('/')
                .map(|(p, _)| p.to_string())
                .unwrap_or_default(),
            None => path.clone(),
        };

        match (method.as_str(), name) {
            ("GET", None) => {
                let selector = query.get("labelSelector").cloned().unwrap_or_default();
                let prefix = format!("{path}/");
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|(p, o)| {
                        p.starts_with(&prefix)
                            && !p[prefix.len()..].contains('/')
                            && labels_match(o, &selector)
                    })
                    .map(|(_, o)| o.clone())
                    .collect();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            ("GET", Some(_)) => match s.objects.get(&obj_path) {
                Some(o) => (200, o.clone()),
                None => (404, status(404, "NotFound", "not found")),
            },
            ("POST", None) => {
                let mut obj = body.unwrap_or(Value::Null);
                let name = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or("unnamed")
                    .to_string();
                obj["metadata"]["uid"] = json!(format!("uid-{name}"));
                s.objects.insert(format!("{path}/{name}"), obj.clone());
                (201, obj)
            }
            ("PATCH", Some(_)) if content_type.starts_with("application/apply-patch") => {
                let mut obj = body.unwrap_or(Value::Null);
                let old = s.objects.get(&obj_path).cloned();
                match &old {
                    Some(old) => {
                        for k in ["uid", "generation", "resourceVersion", "creationTimestamp"] {
                            if !old["metadata"][k].is_null() {
                                obj["metadata"][k] = old["metadata"][k].clone();
                            }
                        }
                        if !old["status"].is_null() {
                            obj["status"] = old["status"].clone();
                        }
                    }
                    None => {
                        obj["metadata"]["uid"] = json!(format!("uid-{}", name.unwrap_or("")));
                        obj["metadata"]["generation"] = json!(1);
                    }
                }
                s.objects.insert(obj_path, obj.clone());
                (200, obj)
            }
            ("PATCH", Some(_)) => {
                let Some(mut obj) = s.objects.get(&obj_path).cloned() else {
                    return (404, status(404, "NotFound", "not found"));
                };
                if let Some(patch) = &body {
                    merge(&mut obj, patch);
                }
                s.objects.insert(obj_path, obj.clone());
                (200, obj)
            }
            ("DELETE", Some(_)) => match s.objects.remove(&obj_path) {
                Some(o) => (200, o),
                None => (404, status(404, "NotFound", "not found")),
            },
            _ => {
                s.unexpected.push(format!("{method} {path}"));
                (
                    418,
                    status(418, "Unexpected", "the fake does not serve this"),
                )
            }
        }
    }
}

impl Server {
    /// Stops serving (drops the client) and fails if the server task panicked.
    pub async fn finish(self) {
        drop(self.client);
        self.task.await.expect("fake API server task");
    }
}

/// A fake broker admin API: statuses by admin address, `set_voters` calls recorded.
#[derive(Clone, Default)]
pub struct FakeAdmin {
    inner: Arc<Mutex<AdminState>>,
}

#[derive(Default)]
struct AdminState {
    statuses: BTreeMap<String, BrokerNodeStatus>,
    voters_calls: Vec<(String, Vec<String>)>,
}

impl FakeAdmin {
    /// Sets what `addr` answers to `/status.json` (unset addresses are unreachable).
    pub fn set_status(&self, addr: &str, status: BrokerNodeStatus) {
        self.inner
            .lock()
            .unwrap()
            .statuses
            .insert(addr.to_string(), status);
    }

    /// `(addr, voters)` of every `POST /cluster/voters`.
    pub fn voters_calls(&self) -> Vec<(String, Vec<String>)> {
        self.inner.lock().unwrap().voters_calls.clone()
    }
}

impl BrokerAdmin for FakeAdmin {
    fn status<'a>(&'a self, addr: &'a str) -> AdminFuture<'a, BrokerNodeStatus> {
        let r = self.inner.lock().unwrap().statuses.get(addr).cloned();
        Box::pin(async move {
            r.ok_or_else(|| Error::BrokerAdmin {
                addr: addr.into(),
                message: "unreachable (fake)".into(),
            })
        })
    }

    fn set_voters<'a>(
        &'a self,
        addr: &'a str,
        voters: &'a [String],
    ) -> AdminFuture<'a, VotersOutcome> {
        let mut st = self.inner.lock().unwrap();
        st.voters_calls.push((addr.to_string(), voters.to_vec()));
        let r: Result<VotersOutcome> = match st.statuses.get(addr) {
            Some(s) => Ok(s
                .raft
                .iter()
                .map(|(stream, r)| {
                    let what = if r.is_leader { "changed" } else { "not leader" };
                    (stream.clone(), what.to_string())
                })
                .collect()),
            None => Err(Error::BrokerAdmin {
                addr: addr.into(),
                message: "unreachable (fake)".into(),
            }),
        };
        Box::pin(async move { r })
    }
}

/// A ready broker's status: node `id`, both standard streams with `voters`, leading them when
/// `leader`, applied up to `applied` of `commit` 1000.
pub fn broker_status(id: u64, voters: &[u64], leader: bool, applied: u64) -> BrokerNodeStatus {
    let raft = ["transactions", "decisions"]
        .iter()
        .map(|s| {
            (
                s.to_string(),
                StreamRaftStatus {
                    is_leader: leader,
                    leader_id: None,
                    term: 3,
                    voters: voters.iter().copied().collect(),
                    learners: Default::default(),
                    commit_index: 1000,
                    applied_index: applied,
                    ..Default::default()
                },
            )
        })
        .collect();
    BrokerNodeStatus {
        ready: true,
        node_id: Some(id),
        raft,
        ..Default::default()
    }
}
