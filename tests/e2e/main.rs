//! End-to-end tests: the real `tessera` binary, an operator and workers as separate processes
//! on loopback, driven through the gRPC API and the CLI.

mod accounts;
mod audit;
mod authz;
mod billing;
mod fl;
mod harness;
mod identity;
mod money;
mod mpc;
mod ops;
mod rest;
mod results;
mod spine;
mod tee;
mod trade;
