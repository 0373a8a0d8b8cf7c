//! (to be written: see the crate docs)
