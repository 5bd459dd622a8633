//! The scheduler: rotates the Khoros Bot API v3 token and exports the pipeline's metrics.
//!
//! It rotates the token weekly (and early when it nears expiry) through
//! `PUT /bots/v3/tokens/appId/{appId}`, writes it to the `bridge_tokens` KV bucket where the
//! workers watch it, and serves `/metrics` with token, rotation and JetStream gauges. The
//! schedule derives from the stored record, not from the process start; a lease in KV picks
//! the one replica that rotates, and a compare-and-set claim per token revision makes sure
//! that even two schedulers that both think they lead never refresh the same token twice.
//!
//! # Layout
//! - [`config`]: `SchedulerConfig` from the environment.
//! - [`app`]: `App::build` / `run_until_stopped`, health routes and task supervision.
//! - [`service`]: the long-running loop: topology, seed, lease, checks.
//! - [`records`]: the record of the last rotation attempt and its vocabulary.
//! - [`schedule`]: the pure decision "is a rotation due now".
//! - [`rotation`]: seeding, the fenced rotation itself, token gauges.
//! - [`lease`]: the rotation lease (create / renew / take over / release).
//! - [`jetstream_metrics`]: stream depth, consumer lag and dead-letter gauges.
//! - [`cli`]: the command line (clap) and exit codes.
//! - [`commands`]: the `rotate-now` and `token-status` operator commands.
//! - [`verify`]: is the stored token still accepted (lost-token detection).
//! - [`telemetry`]: the scheduler's metric names.

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod jetstream_metrics;
pub mod lease;
pub mod records;
pub mod rotation;
pub mod schedule;
pub mod service;
pub mod telemetry;
pub mod verify;

pub use app::App;
pub use config::SchedulerConfig;
