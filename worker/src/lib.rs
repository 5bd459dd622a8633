//! The worker: consumes stored Khoros events, asks the Kore.ai bot, replies through Khoros.
//!
//! One durable pull consumer per (event type, partition) with at most one unacknowledged
//! message, shared by every replica: one conversation is handled one message at a time, in
//! stored order, while different partitions run in parallel (`docs/decisions.md`,
//! "Subjects say what and whose").
//!
//! # Layout
//! - `config`: `WorkerConfig` from the environment.
//! - `app`: `App::build` / `run_until_stopped`: consumers, health and metrics listeners.
//! - `consumer`: the per-partition pull loop: in-progress acks, ack/term/nak, shutdown.
//! - `handler`: what each event type does (`message`, `update`/`control`, `kore_reply`).
//! - `reply`: turns the bot's answer into Khoros calls (respond, hand-off, tags).
//! - `khoros_steps`: executes those calls with retries, token reload and exactly-once checks.
//! - `progress`: the processed-id record per event (KV), so redeliveries are no-ops.
//! - `conversation`: the conversation record (KV): owner, display id, closed, Kore user index.
//! - `token`: the Bot API token, watched in KV and swapped the moment it changes.
//! - `cli`: the command line (service and dead-letter operator commands).
//! - `breaker`: circuit breaker in front of Kore.ai.
//! - `dead_letter`: what finally failed, published with its reason.
//! - `error`: `WorkerError`.
//! - `telemetry`: metric names.

pub mod app;
pub mod breaker;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod conversation;
pub mod dead_letter;
pub mod error;
pub mod handler;
pub mod khoros_steps;
pub mod progress;
pub mod reply;
pub mod telemetry;
pub mod token;

pub use app::App;
pub use config::WorkerConfig;
