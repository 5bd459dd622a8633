//! The contract between the services: everything the ingress, the worker and the scheduler
//! exchange through NATS, in one place.
//!
//! - [`kind`]: the kinds of work ([`EventKind`]), one worker pool each.
//! - [`subject`]: the subject grammar (`khoros.events.<type>.<partition>`, `kore.replies.*`,
//!   `bridge.dlq.*`).
//! - [`headers`]: `x-amzn-RequestId` and the headers stored with every event.
//! - [`envelope`]: those headers as one type ([`Envelope`]), to and from NATS headers.
//! - [`route`]: the conversation key, partitions and dedup ids.
//! - [`keys`]: KV keys derived from ids.

pub mod envelope;
pub mod headers;
pub mod keys;
pub mod kind;
pub mod route;
pub mod subject;

pub use envelope::Envelope;
pub use kind::EventKind;
pub use route::{ConversationKey, RouteFields};
