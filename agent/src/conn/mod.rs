//! A connection's life, the same for the agent and the waypoint: the connection record
//! ([`record`]: facts, Istio labels, metrics and the access log, exactly once) and the registry of
//! live connections ([`registry`]: list, count, close from outside).
//!
//! Admission is decided before a record is carried, by the gate in [`crate::policy::admission`];
//! the record reports that decision and never makes one.
pub mod counted;
pub mod labels;
pub mod record;
pub mod registry;

pub use record::{ConnRecord, Recorder};
pub use registry::{ConnInfo, Registry};
