//! Shared library of the khoros-kore-bridge services.
//!
//! # Layout
//! - [`config`]: typed configuration read from the environment, with `*_FILE` for secrets.
//! - [`event`]: the Khoros Automation Framework event model (lossless for unknown fields).
//! - [`auth`]: webhook authentication, HMAC signature v2 and Basic, with an injectable clock.
//! - [`contract`]: what the services exchange: subjects, headers, event kinds, the envelope,
//!   partitions and KV keys.
//! - [`upstream`]: the HTTP client settings and metrics shared by the Khoros and Kore.ai clients.
//! - [`khoros`]: the Khoros Bot API v3 client (respond, control, tag, tokens, request log).
//! - [`kore`]: the Kore.ai Webhook channel client (JWT, V1/V2 requests, answer parsing).
//! - [`kv`]: typed JSON records in NATS KV: read, compare-and-set write, modify.
//! - [`retry`]: exponential backoff with full jitter, bounded, honouring Retry-After.
//! - [`token`]: the Bot API token record kept in KV.
//! - [`topology`]: NATS connection and the idempotent `ensure` of streams and KV buckets.
//! - [`telemetry`]: JSON logs through `tracing` and the Prometheus recorder and listener.
//! - [`cli`]: what the binaries' command lines share: `--help` environment section, exit codes.
//! - [`service`]: the skeleton every service runs on: listeners, NATS and topology, one
//!   `/readyz` shape, task supervision.
//! - [`shutdown`]: one SIGTERM / Ctrl-C future turned into a `CancellationToken`.

pub mod auth;
pub mod cli;
pub mod config;
pub mod contract;
pub mod event;
pub mod khoros;
pub mod kore;
pub mod kv;
pub mod retry;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod token;
pub mod topology;
pub mod upstream;

pub use config::Secret;
