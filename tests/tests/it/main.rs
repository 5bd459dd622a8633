//! Integration tests: one binary, a module per feature. Each test starts its own nats-server.

mod helpers;
mod ingress;
