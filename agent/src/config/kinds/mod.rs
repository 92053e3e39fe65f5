//! The Istio and Gateway API kinds sluice reads, one file per kind: the wire shape of each kind's
//! `spec` (Istio's field names, unknown fields rejected) and the checks Istio's own validation runs
//! on it (`validate()`, returning [`common::Issue`]s).
//!
//! Layering: [`common`] holds what several kinds share and imports no kind; each kind file imports
//! [`common`] (and `config::duration`) and no other kind; the snapshot compiler (`Snapshot::compile`)
//! imports the kinds. A kind file never imports the compiler.
pub mod authorization_policy;
pub mod common;
pub mod destination_rule;
pub mod gateway_api;
pub mod istio_gateway;
pub mod peer_authentication;
pub mod request_authentication;
pub mod service_entry;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod virtual_service;
