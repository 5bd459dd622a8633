//! Shared library of the khoros-kore-bridge services.
//!
//! # Layout
//! - [`config`]: typed configuration read from the environment, with `*_FILE` for secrets.
//! - [`event`]: the Khoros Automation Framework event model (lossless for unknown fields).
//! - [`auth`]: webhook authentication, HMAC signature v2 and Basic, with an injectable clock.
//! - [`routing`]: subjects, partitions and the message headers the ingress sets.
//! - [`upstream`]: the HTTP client settings and metrics shared by the Khoros and Kore.ai clients.
//! - [`khoros`]: the Khoros Bot API v3 client (respond, control, tag, tokens, request log).
//! - [`kore`]: the Kore.ai Webhook channel client (JWT, V1/V2 requests, answer parsing).
//! - [`retry`]: exponential backoff with full jitter, bounded, honouring Retry-After.
//! - [`token`]: the Bot API token record kept in KV.
//! - [`topology`]: NATS connection and the idempotent `ensure` of streams and KV buckets.
//! - [`telemetry`]: JSON logs through `tracing` and the Prometheus recorder and listener.
//! - [`cli`]: what the binaries' command lines share: `--help` environment section, exit codes.
//! - [`shutdown`]: one SIGTERM / Ctrl-C future turned into a `CancellationToken`.

pub mod auth;
pub mod cli;
pub mod config;
pub mod event;
pub mod khoros;
pub mod kore;
pub mod retry;
pub mod routing;
pub mod shutdown;
pub mod telemetry;
pub mod token;
pub mod topology;
pub mod upstream;

pub use config::Secret;
