//! proxy (placeholder).
