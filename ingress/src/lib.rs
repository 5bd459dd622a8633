//! The ingress: authenticates Khoros webhook events and stores them in JetStream.
//!
//! It is thin on purpose (DESIGN decision 1): authenticate, read just enough to route, publish
//! the raw bytes with `Nats-Msg-Id` = `x-amzn-RequestId`, answer 202 once the PubAck is in.
//! It never calls Khoros or Kore.ai and never answers 202 for an event that is not stored.
//!
//! # Layout
//! - [`config`]: `IngressConfig` from the environment.
//! - [`app`]: `App::build` / `run_until_stopped`, the router and readiness.
//! - [`intake`]: the request pipeline, from raw request to stored event.
//! - [`kore_callback`]: `/kore/callback`, Kore.ai's asynchronous deliveries into `KORE_REPLIES`.
//! - [`replay`]: the JetStream-backed guard against signatures replayed under a new request id.
//! - [`publish`]: publishing with a PubAck deadline.
//! - [`error`]: `IngressError`, the one mapping from failure to status code.
//! - [`telemetry`]: the ingress' metric names.

pub mod app;
pub mod config;
pub mod error;
pub mod intake;
pub mod kore_callback;
pub mod publish;
pub mod replay;
pub mod telemetry;

pub use app::App;
pub use config::IngressConfig;
