//! Observability primitives: the Prometheus registry with Istio's metric names ([`metrics`]), the
//! one vocabulary of refusal and failure reasons ([`reason`]) and logging setup ([`logging`]).
//! Connections are counted and logged by their record (`crate::conn::record`), not here.
pub mod logging;
pub mod metrics;
pub mod reason;
