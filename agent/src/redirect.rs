//! redirect (placeholder).
