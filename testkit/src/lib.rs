//! The test kit: what the integration tests, the simulators' self-tests, the demo and the
//! benchmark share.
//!
//! - [`nats_server`]: starts `nats-server -js` on a free port with a temp store; stop, restart,
//!   kill on drop.
//! - [`nats_cluster`]: three routed `nats-server -js` nodes on free loopback ports, each
//!   killable, pausable (a network cut) and restartable; who leads which stream.
//! - [`sign`]: builds webhook requests the way Khoros signs them (HMAC v2 or Basic).
//! - [`wait`]: bounded waits on a condition, with a clear message on timeout.
//! - [`token_seed`]: writes a Bot API token into KV the way the scheduler does, for tests that
//!   run a worker without a scheduler.

pub mod nats_cluster;
pub mod nats_server;
pub mod sign;
pub mod token_seed;
pub mod wait;
