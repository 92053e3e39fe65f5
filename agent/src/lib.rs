//! sluice: a sidecarless ("ambient") service-mesh data plane.
//!
//! The library holds every concern; `main.rs` only parses arguments and dispatches. Data flows one
//! way: config source -> compiled snapshot -> proxies read the current snapshot.
//!
//! | module | owns |
//! |---|---|
//! | [`shutdown`] | waiting for SIGTERM/SIGINT |
//! | [`limits`] | process limits (the open-file limit raised at start) |
//! | [`identity`] | SPIFFE identities, the local CA, leaf certificates and rotation, TLS configs |
//! | [`redirect`] | eBPF loading and pinning, in-pod sockets, pod enrollment |
//! | [`cni`] | the CNI plugin, its installer and its wire protocol to the local agent |
//! | [`config`] | mesh config: one file per kind, the kind table, sources, the compiled snapshot |
//! | [`telemetry`] | metrics with Istio's names, the one reason vocabulary, logging setup |
//! | [`policy`] | the admission gate, PeerAuthentication modes and AuthorizationPolicy decisions |
//! | [`tunnel`] | HBONE: HTTP/2 CONNECT over mutual TLS on 15008, client pool and server |
//! | [`conn`] | the connection record (metrics, access log) and the live-connection registry |
//! | [`proxy`] | the per-pod capture listeners, routing, delivery and byte copying |
//! | [`admin`] | readiness, metrics and admin HTTP endpoints |
//! | [`cli`] | the command line of the `sluice` binary |
//! | [`waypoint`] | `sluice waypoint`: the L7 proxy (HTTP routing, L7 policy) |
//! | [`inspect`] | `sluice config` / `sluice status`: an agent's admin JSON rendered for a human |
//! | [`analyze`] | `sluice analyze`: offline config validation, compiler-style or JSON |
//! | [`agent`] | the agent process: wires config, enrollment, proxies, CNI server and admin together |
//! | [`fuzzing`] | the fuzz targets' bodies (`agent/fuzz`), replayed on stable by `tests/fuzz_corpus.rs` |
//!
//! The rows run from the bottom layer to the top: a module uses only modules above it in this
//! list (docs/ARCHITECTURE.md gives the layers; `tests/layers.rs` checks them).
pub mod admin;
pub mod agent;
pub mod analyze;
pub mod cli;
pub mod cni;
pub mod config;
pub mod conn;
pub mod fuzzing;
pub mod identity;
pub mod inspect;
pub mod limits;
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod shutdown;
pub mod telemetry;
pub mod tunnel;
pub mod waypoint;
