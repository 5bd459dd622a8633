//! The ingress: authenticates Khoros webhook events and stores them in JetStream.
//!
//! It is thin on purpose (`docs/decisions.md`): authenticate, read just enough to route, publish
//! the raw bytes once with `Nats-Msg-Id` = `x-amzn-RequestId`, answer 202 once the PubAck is
//! in. It never calls Khoros or Kore.ai and never answers 202 for an event that is not stored.
//! A signed request replayed under a new request id is stored, and dropped by the worker (the
//! digest of its signature travels in a header), which keeps one write per event here.
//!
//! # Layout
//! - [`config`]: `IngressConfig` from the environment.
//! - [`app`]: `App::build` / `run_until_stopped`, the router and readiness.
//! - [`intake`]: the request pipeline, from raw request to stored event.
//! - [`kore_callback`]: `/kore/callback`, Kore.ai's asynchronous deliveries into `KORE_REPLIES`,
//!   for users with a bot turn outstanding, deduplicated by body hash.
//! - [`server`]: the hardened listener (connection cap, header deadline, graceful drain).
//! - [`body`]: reading bodies within a deadline, a size limit and a shared memory budget.
//! - [`cli`]: the command line (clap) and exit codes.
//! - [`process`]: the process around the app: telemetry, configuration, runtime.
//! - [`publish`]: publishing with a PubAck deadline.
//! - [`error`]: `IngressError`, the one mapping from failure to status code.
//! - [`telemetry`]: the ingress' metric names.

pub mod app;
pub mod body;
pub mod cli;
pub mod config;
pub mod error;
pub mod intake;
pub mod kore_callback;
pub mod process;
pub mod publish;
pub mod server;
pub mod telemetry;

pub use app::App;
pub use config::IngressConfig;
