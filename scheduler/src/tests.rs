//! Scheduler tests (see the end-to-end tests for real workers).
