//! End-to-end harness (simulated nodes and pods in network namespaces). Built by the redirection issue.
