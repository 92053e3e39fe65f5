//! Logging setup and metrics (Prometheus registry with Istio's metric names).
pub mod logging;
pub mod metrics;
