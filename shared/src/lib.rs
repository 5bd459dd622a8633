//! Shared library of the khoros-kore-bridge services.
//!
//! # Layout
//! - [`config`]: typed configuration read from the environment, with `*_FILE` for secrets.
//! - [`event`]: the Khoros Automation Framework event model (lossless for unknown fields).
//! - [`auth`]: webhook authentication, HMAC signature v2 and Basic, with an injectable clock.
//! - [`routing`]: subjects, partitions and the message headers the ingress sets.
//! - [`topology`]: NATS connection and the idempotent `ensure` of streams and KV buckets.
//! - [`telemetry`]: JSON logs through `tracing` and the Prometheus recorder and listener.
//! - [`shutdown`]: one SIGTERM / Ctrl-C future turned into a `CancellationToken`.

pub mod auth;
pub mod config;
pub mod event;
pub mod routing;
pub mod shutdown;
pub mod telemetry;
pub mod topology;

pub use config::Secret;
