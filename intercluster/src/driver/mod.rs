//! Tokio driver (being written).
