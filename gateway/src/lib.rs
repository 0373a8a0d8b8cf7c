//! Operator gRPC services over the scheduler, store and accounting
