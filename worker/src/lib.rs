//! The worker: consumes stored Khoros events, asks the Kore.ai bot, replies through Khoros.
//!
//! One durable pull consumer per (event type, partition), each pulled by the one replica that
//! owns it (`ownership`); inside a partition, different conversations run concurrently and
//! one conversation one event at a time, in stored order (`partition`). Every Bot API call a
//! reply takes goes through one state machine (`delivery`) that never sends twice and never
//! assumes an outcome (`docs/decisions.md`, "Partitions are owned", "Every reply has a known
//! outcome").
//!
//! # Layout
//! - `config`: `WorkerConfig` from the environment.
//! - `app`: `App::build` / `run_until_stopped`: ownership, health and metrics listeners.
//! - `ownership`: which replica runs which partition (membership, rendezvous, claims).
//! - `partition`: the runner of one owned partition: conversation lanes, acks, stuck gauge.
//! - `handler`: what each event type does (`message`, `update`/`control`, `kore_reply`).
//! - `reply`: turns the bot's answer into Khoros calls (respond, hand-off, tags).
//! - `delivery`: the delivery state machine: runs those calls, resolves lost answers against
//!   Khoros' request log, dead-letters what fails or stays unknown.
//! - `progress`: the progress record per event (KV, compare-and-set), so redeliveries,
//!   replays and a second processor are no-ops.
//! - `conversation`: the conversation record (KV): owner, display id, closed, Kore user id.
//! - `identity`: the keyed-hash user id Kore.ai sees.
//! - `turns`: outstanding async Kore.ai turns and their deadlines.
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
pub mod conversation;
pub mod dead_letter;
pub mod delivery;
pub mod error;
pub mod handler;
pub mod identity;
pub mod ownership;
pub mod partition;
pub mod progress;
pub mod reply;
pub mod telemetry;
pub mod token;
pub mod turns;

pub use app::App;
pub use config::WorkerConfig;
