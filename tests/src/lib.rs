//! Test support for khoros-kore-bridge: a real `nats-server` harness, the Khoros and Kore.ai
//! simulators and the load generator live here so tests, the demo and benchmarks share them.
//!
//! # Layout
//! - [`nats_server`]: starts `nats-server -js` on a free port with a temp store; stop, restart, kill on drop.
//! - [`wait`]: bounded waits on a condition, with a clear message on timeout.
//! - [`khoros_sim`]: the Khoros Bot API v3 gateway, conversation model and event sender.
//! - [`kore_sim`]: the Kore.ai Webhook channel with a scriptable bot.
//! - [`sign`]: builds Khoros-signed webhook requests (HMAC v2 or Basic) for tests and tools.

pub mod khoros_sim;
pub mod kore_sim;
pub mod loadgen;
pub mod nats_server;
pub mod sign;
pub mod token_seed;
pub mod wait;
