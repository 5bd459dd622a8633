//! The load generator and benchmark suite (`loadgen` binary, `dev/bench`).
//!
//! It sends realistic, correctly signed Khoros events (HMAC v2, a unique `x-amzn-RequestId`
//! each, message and update events over many conversations) at a fixed rate (open loop,
//! latency from the intended send time) or as fast as N connections allow, and reports
//! throughput, HDR-histogram latency percentiles and errors by status. End to end, it matches
//! the bot's replies at khoros-sim to the events that caused them. `loadgen bench` runs the
//! whole suite against ceilings measured in the same run: bare HTTP, raw JetStream publish, a
//! naive one-write ingress and a node:http + HMAC server that stores nothing.
//!
//! # Layout
//! - [`events`]: the generated events (bodies, request ids, conversations over partitions).
//! - [`driver`]: the open/closed-loop engine and its HDR histograms.
//! - [`http`]: signed webhook requests over hyper HTTP/1.1 connections.
//! - [`publish`]: the same events published straight to JetStream (the broker ceiling).
//! - [`bare`]: the do-nothing 202 server (the HTTP ceiling).
//! - [`naive`]: the naive one-write ingress (HMAC v2, one publish, PubAck, 202).
//! - [`node_hmac`]: node:http + HMAC v2 that stores nothing (`bench/servers/node-hmac.js`).
//! - [`e2e`]: reply matching at khoros-sim, end-to-end latency, overhead, losses, duplicates.
//! - [`procs`]: child processes, `/proc` memory and CPU.
//! - [`bench`]: the orchestrated benchmark and its JSON results.
//! - [`targets`]: the ratios to the ceilings and the targets the run is checked against.
//! - [`table`]: the Markdown tables.
//! - [`stats`]: latency and load summaries.
//! - [`cli`]: the command line.

pub mod bare;
pub mod bench;
pub mod cli;
pub mod driver;
pub mod e2e;
pub mod events;
pub mod http;
pub mod naive;
pub mod node_hmac;
pub mod procs;
pub mod publish;
pub mod stats;
pub mod table;
pub mod targets;
