//! Bounds used across the system. Every queue, frame and batch has one; units are in the names.

/// Largest frame a [`crate::Link`] accepts by default (4 MiB).
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Frames buffered in one direction of an in-memory or gRPC link before `send` waits.
pub const LINK_QUEUE_FRAMES: usize = 16;
/// Longest key (after normalisation) accepted from a dataset, in bytes.
pub const KEY_BYTES_MAX: usize = 4096;
/// Rows accepted from one dataset file.
pub const DATASET_ROWS_MAX: usize = 50_000_000;
/// Lifetime of a job ticket signed by the operator.
pub const TICKET_TTL_MS: i64 = 10 * 60 * 1000;
/// Tickets remembered by a worker for replay detection.
pub const TICKET_REPLAY_CACHE_MAX: usize = 100_000;
