//! Integration tests: one binary, a module per feature. Each test starts its own nats-server.

mod cli;
mod deploy_metrics;
mod exactly_once;
mod helpers;
mod hostile;
mod ingress;
mod reliability;
mod scheduler;
mod stack;
mod topology;
mod worker;
