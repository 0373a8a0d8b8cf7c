//! The party worker: datasets, ticket checks, engines, gRPC peer links, usage measurement
