//! sluice: a sidecarless ("ambient") service-mesh data plane.
//!
//! The library holds every concern; `main.rs` only parses arguments and dispatches. Data flows one
//! way: config source -> compiled snapshot -> proxies read the current snapshot.
//!
//! | module | owns |
//! |---|---|
//! | [`analyze`] | `sluice analyze`: offline config validation, compiler-style or JSON |
//! | [`cli`] | the command line of the `sluice` binary |
//! | [`config`] | mesh config model, the file source and the snapshot enrollment reads |
//! | [`identity`] | SPIFFE identities, the local CA, leaf certificates and rotation, TLS configs |
//! | [`redirect`] | eBPF loading and pinning, in-pod sockets, pod enrollment |
//! | [`tunnel`] | HBONE: HTTP/2 CONNECT over mutual TLS on 15008, client pool and server |
//! | [`policy`] | PeerAuthentication modes and L4 AuthorizationPolicy decisions over the snapshot |
//! | [`proxy`] | the per-pod capture listeners and the byte copying between them and destinations |
//! | [`cni`] | the CNI plugin and its wire protocol to the local agent |
//! | [`agent`] | the agent process: wires config, enrollment, proxies, CNI server and admin together |
//! | [`inspect`] | `sluice config` / `sluice status`: an agent's admin JSON rendered for a human |
//! | [`admin`] | readiness, metrics and admin HTTP endpoints |
//! | [`telemetry`] | logging setup and metrics |
//! | [`waypoint`] | `sluice waypoint`: the L7 proxy (HTTP routing, L7 policy) |
pub mod admin;
pub mod agent;
pub mod analyze;
pub mod cli;
pub mod cni;
pub mod config;
pub mod conn;
pub mod identity;
pub mod inspect;
pub mod policy;
pub mod proxy;
pub mod redirect;
pub mod shutdown;
pub mod telemetry;
pub mod tunnel;
pub mod waypoint;
