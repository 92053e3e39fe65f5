//! Kernel redirection: the start-up kernel feature probe ([`features`]), eBPF loading and pinning ([`kernel`]), the programs' debug decision log ([`klog`]), the agent's sockets inside pod
//! network namespaces ([`inpod`]), the pod-side policy route for transparent delivery ([`routing`]), and the raw syscalls all of that needs ([`sys`], the only `unsafe` code).
pub mod features;
pub mod inpod;
pub mod kernel;
pub mod klog;
pub mod routing;
pub mod sys;

pub use kernel::{Kernel, KernelError};
pub use sys::NetNs;
