//! The CNI plugin side, per the CNI 1.0 spec: ADD, DEL, CHECK, VERSION. Configuration with
//! `prevResult` on stdin; CNI_* variables in the environment; errors as CNI error JSON on stdout.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use serde_json::{Value, json};

use super::protocol::{MAX_MESSAGE, PodRef, Reply, Request};

/// CNI versions this plugin speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// Default agent socket when the network config does not name one.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/sluice/cni.sock";
/// Largest stdin accepted.
const MAX_STDIN: u64 = 1 << 20;
/// How long ADD waits for the agent (it enrolls the pod before answering).
const AGENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A CNI error: well-known code, message, details.
#[derive(Debug, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: details.into() }
    }
}

/// CNI spec error codes.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// sluice's own (100 and up are the plugin's): the agent refused an ADD whose claim (UID,
    /// node, addresses, network namespace) conflicts with the Pod object or another pod.
    pub const CLAIM_CONFLICT: u32 = 100;
}

/// The environment of one invocation.
#[derive(Debug, Default, Clone)]
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

impl Invocation {
    pub fn from_env() -> Invocation {
        let v = |k: &str| std::env::var(k).unwrap_or_default();
        Invocation {
            command: v("CNI_COMMAND"),
            container_id: v("CNI_CONTAINERID"),
            netns: v("CNI_NETNS"),
            ifname: v("CNI_IFNAME"),
            args: v("CNI_ARGS"),
        }
    }
}

/// Entry point: reads env and stdin, prints the result or a CNI error, returns the exit code.
pub fn main() -> ExitCode {
    let inv = Invocation::from_env();
    let mut stdin = Vec::new();
    if inv.command != "VERSION"
        && let Err(e) = std::io::stdin().take(MAX_STDIN + 1).read_to_end(&mut stdin)
    {
        return emit_error(
            "1.0.0",
            &CniError::new(code::IO_FAILURE, "cannot read network config from stdin", e.to_string()),
        );
    }
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| "1.0.0".into());
    match run(&inv, &stdin, &AgentClient) {
        Ok(Some(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => emit_error(&version, &e),
    }
}

fn emit_error(version: &str, e: &CniError) -> ExitCode {
    let v = json!({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details});
    println!("{v}");
    eprintln!("sluice-cni: {} ({})", e.msg, e.details);
    ExitCode::FAILURE
}

/// Talks to the agent; a trait so the plugin logic is tested without one.
pub trait Agent {
    fn call(&self, socket: &Path, req: &Request) -> Result<Reply, std::io::Error>;
}

/// The real agent client over the Unix socket.
pub struct AgentClient;

impl Agent for AgentClient {
    fn call(&self, socket: &Path, req: &Request) -> Result<Reply, std::io::Error> {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(AGENT_TIMEOUT))?;
        s.set_write_timeout(Some(AGENT_TIMEOUT))?;
        let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
        line.push(b'\n');
        s.write_all(&line)?;
        let mut reader = BufReader::new(s.take(MAX_MESSAGE as u64));
        let mut resp = String::new();
        reader.read_line(&mut resp)?;
        serde_json::from_str(&resp).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

/// The plugin's decision logic. Returns what to print on success.
pub fn run(inv: &Invocation, stdin: &[u8], agent: &dyn Agent) -> Result<Option<String>, CniError> {
    if inv.command.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENV,
            "CNI_COMMAND is not set",
            "sluice-cni is a CNI plugin: the container runtime runs it with CNI_COMMAND=ADD|DEL|CHECK|VERSION",
        ));
    }
    if inv.command == "VERSION" {
        return Ok(Some(json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS}).to_string()));
    }
    if stdin.len() as u64 > MAX_STDIN {
        return Err(CniError::new(code::DECODE_FAILURE, "network config on stdin is larger than 1 MiB", ""));
    }
    let conf: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(code::DECODE_FAILURE, "network config on stdin is not valid JSON", e.to_string())
    })?;
    let version = conf.get("cniVersion").and_then(Value::as_str).unwrap_or("");
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("unsupported cniVersion `{version}`"),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    let socket = conf
        .get("agentSocket")
        .and_then(Value::as_str)
        .map_or_else(|| PathBuf::from(DEFAULT_AGENT_SOCKET), PathBuf::from);
    let prev = conf.get("prevResult").cloned();

    match inv.command.as_str() {
        "ADD" => {
            let prev = prev.ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "no prevResult: sluice-cni must be chained after the cluster's CNI plugin",
                    "add sluice-cni as the last plugin of the node's conflist",
                )
            })?;
            let Some(pod) = pod_ref(inv, &prev)? else {
                // Not a Kubernetes pod (no K8S_POD_NAMESPACE): nothing to enroll.
                return Ok(Some(with_version(prev, version)));
            };
            let reply = call_agent(agent, &socket, &Request::Add { pod: pod.clone() })?;
            if let (false, Some(field)) = (reply.ok, &reply.conflict) {
                return Err(CniError::new(
                    code::CLAIM_CONFLICT,
                    format!(
                        "sluice agent refused pod {}/{}: its claimed {field} conflict",
                        pod.namespace, pod.name
                    ),
                    reply.error.unwrap_or_default(),
                ));
            }
            if !reply.ok {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!("sluice agent refused pod {}/{}", pod.namespace, pod.name),
                    reply.error.unwrap_or_default(),
                ));
            }
            Ok(Some(with_version(prev, version)))
        }
        "DEL" => {
            // DEL must succeed even when things are half gone; tell the agent if it is there.
            if let Ok(Some(pod)) = pod_ref(inv, prev.as_ref().unwrap_or(&Value::Null))
                && let Err(e) = agent.call(&socket, &Request::Del { pod })
            {
                eprintln!(
                    "sluice-cni: DEL: agent at {} not reachable ({e}); it cleans up on restart",
                    socket.display()
                );
            }
            Ok(None)
        }
        "CHECK" => {
            let prev =
                prev.ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK without prevResult", ""))?;
            if let Some(pod) = pod_ref(inv, &prev)? {
                let reply = call_agent(agent, &socket, &Request::Check { pod: pod.clone() })?;
                if !reply.ok {
                    return Err(CniError::new(
                        code::TRY_AGAIN_LATER,
                        format!(
                            "pod {}/{} is not in the state the mesh config asks for",
                            pod.namespace, pod.name
                        ),
                        reply.error.unwrap_or_default(),
                    ));
                }
            }
            Ok(None)
        }
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unsupported CNI_COMMAND `{other}`"),
            "supported: ADD, DEL, CHECK, VERSION",
        )),
    }
}

fn call_agent(agent: &dyn Agent, socket: &Path, req: &Request) -> Result<Reply, CniError> {
    agent.call(socket, req).map_err(|e| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!("sluice agent not reachable at {}", socket.display()),
            format!(
                "{e}; the pod must not start outside the mesh: is the sluice agent running on this node?"
            ),
        )
    })
}

fn with_version(mut prev: Value, version: &str) -> String {
    if let Some(o) = prev.as_object_mut() {
        o.insert("cniVersion".into(), Value::String(version.to_string()));
    }
    prev.to_string()
}

/// Parses `K=V;K=V` CNI_ARGS.
fn cni_arg<'a>(args: &'a str, key: &str) -> Option<&'a str> {
    args.split(';').find_map(|kv| kv.split_once('=').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim()))
}

/// The pod this invocation is about, or None when the runtime is not Kubernetes.
fn pod_ref(inv: &Invocation, prev: &Value) -> Result<Option<PodRef>, CniError> {
    let Some(namespace) = cni_arg(&inv.args, "K8S_POD_NAMESPACE") else {
        return Ok(None);
    };
    let name = cni_arg(&inv.args, "K8S_POD_NAME").unwrap_or_default();
    if namespace.is_empty() || name.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENV,
            "CNI_ARGS has K8S_POD_NAMESPACE but no K8S_POD_NAME",
            format!("CNI_ARGS={}", inv.args),
        ));
    }
    if inv.container_id.is_empty() {
        return Err(CniError::new(code::INVALID_ENV, "CNI_CONTAINERID is not set", ""));
    }
    if inv.command != "DEL" {
        if inv.netns.is_empty() {
            return Err(CniError::new(code::INVALID_ENV, "CNI_NETNS is not set", ""));
        }
        if !Path::new(&inv.netns).exists() {
            return Err(CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("network namespace {} does not exist", inv.netns),
                "the sandbox is gone or CNI_NETNS is wrong",
            ));
        }
    }
    let ips = prev
        .get("ips")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                .filter_map(|cidr| cidr.split('/').next()?.parse::<IpAddr>().ok())
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(PodRef {
        namespace: namespace.to_string(),
        name: name.to_string(),
        uid: cni_arg(&inv.args, "K8S_POD_UID").unwrap_or_default().to_string(),
        container_id: inv.container_id.clone(),
        netns: PathBuf::from(&inv.netns),
        ips,
    }))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    struct FakeAgent {
        reply: Result<Reply, std::io::ErrorKind>,
        seen: RefCell<Vec<Request>>,
    }

    impl Agent for FakeAgent {
        fn call(&self, _socket: &Path, req: &Request) -> Result<Reply, std::io::Error> {
            self.seen.borrow_mut().push(req.clone());
            self.reply.clone().map_err(std::io::Error::from)
        }
    }

    fn agent(reply: Result<Reply, std::io::ErrorKind>) -> FakeAgent {
        FakeAgent { reply, seen: RefCell::new(Vec::new()) }
    }

    fn inv(cmd: &str) -> Invocation {
        Invocation {
            command: cmd.into(),
            container_id: "c1".into(),
            netns: "/proc/self/ns/net".into(),
            ifname: "eth0".into(),
            args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_UID=u-1".into(),
        }
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"k8s","type":"sluice-cni","agentSocket":"/tmp/x.sock",
        "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],
        "ips":[{"address":"10.1.0.5/24","interface":0},{"address":"fd00:1::5/64","interface":0}]}}"#;

    #[test]
    fn add_passes_prev_result_through_and_tells_the_agent() {
        let a = agent(Ok(Reply::ok(true)));
        let out = run(&inv("ADD"), CONF.as_bytes(), &a).expect("ok").expect("output");
        let v: Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["ips"][0]["address"], "10.1.0.5/24");
        assert_eq!(v["cniVersion"], "1.0.0");
        let seen = a.seen.borrow();
        let Request::Add { pod } = &seen[0] else { panic!("expected ADD, got {seen:?}") };
        assert_eq!((pod.namespace.as_str(), pod.name.as_str(), pod.key().as_str()), ("shop", "web", "u-1"));
        assert_eq!(
            pod.ips,
            vec!["10.1.0.5".parse::<IpAddr>().expect("ip"), "fd00:1::5".parse().expect("ip")]
        );
    }

    #[test]
    fn add_fails_when_agent_is_down_or_refuses() {
        let e = run(&inv("ADD"), CONF.as_bytes(), &agent(Err(std::io::ErrorKind::ConnectionRefused)))
            .expect_err("down");
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
        assert!(e.msg.contains("not reachable at /tmp/x.sock"), "{e:?}");
        let e = run(&inv("ADD"), CONF.as_bytes(), &agent(Ok(Reply::err("boom")))).expect_err("refused");
        assert!(e.details.contains("boom"));
        // A conflicting claim is its own named error, with the agent's explanation as details.
        let refused = Reply::conflict("netns", "pod shop/web: network namespace ... is already registered");
        let e = run(&inv("ADD"), CONF.as_bytes(), &agent(Ok(refused))).expect_err("conflict");
        assert_eq!(e.code, code::CLAIM_CONFLICT, "{e:?}");
        assert!(e.msg.contains("refused pod shop/web") && e.msg.contains("netns"), "{e:?}");
        assert!(e.details.contains("already registered"), "{e:?}");
    }

    #[test]
    fn malformed_invocations_are_clear_cni_errors() {
        let a = agent(Ok(Reply::ok(true)));
        let cases: Vec<(&str, Invocation, &str, u32)> = vec![
            ("missing command", Invocation::default(), CONF, code::INVALID_ENV),
            ("garbage stdin", inv("ADD"), "{not json", code::DECODE_FAILURE),
            (
                "bad version",
                inv("ADD"),
                r#"{"cniVersion":"9.9.9","prevResult":{}}"#,
                code::INCOMPATIBLE_VERSION,
            ),
            ("not chained", inv("ADD"), r#"{"cniVersion":"1.0.0"}"#, code::INVALID_CONFIG),
            (
                "unknown netns",
                Invocation { netns: "/nonexistent/ns".into(), ..inv("ADD") },
                CONF,
                code::UNKNOWN_CONTAINER,
            ),
            ("missing netns", Invocation { netns: String::new(), ..inv("ADD") }, CONF, code::INVALID_ENV),
            (
                "missing pod name",
                Invocation { args: "K8S_POD_NAMESPACE=x".into(), ..inv("ADD") },
                CONF,
                code::INVALID_ENV,
            ),
            ("unknown command", inv("FROB"), CONF, code::INVALID_ENV),
        ];
        for (name, i, stdin, want) in cases {
            let e = run(&i, stdin.as_bytes(), &a).expect_err(name);
            assert_eq!(e.code, want, "{name}: {e:?}");
            assert!(!e.msg.is_empty(), "{name}");
        }
        assert!(a.seen.borrow().is_empty(), "malformed invocations must not reach the agent");
    }

    #[test]
    fn del_always_succeeds_and_version_lists_versions() {
        assert_eq!(run(&inv("DEL"), CONF.as_bytes(), &agent(Err(std::io::ErrorKind::NotFound))), Ok(None));
        let v = run(&inv("VERSION"), b"", &agent(Ok(Reply::ok(false)))).expect("ok").expect("out");
        assert!(v.contains("\"1.0.0\""));
    }

    #[test]
    fn non_kubernetes_add_passes_through_without_agent() {
        let a = agent(Err(std::io::ErrorKind::ConnectionRefused));
        let out = run(&Invocation { args: String::new(), ..inv("ADD") }, CONF.as_bytes(), &a).expect("ok");
        assert!(out.is_some());
        assert!(a.seen.borrow().is_empty());
    }
}
