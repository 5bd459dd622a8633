//! Clustered JetStream: the pipeline on a three-node cluster. A test binary of its own, so a
//! cluster (three servers, the services, a steady load) never shares the machine with the other
//! integration tests: cargo runs test binaries one after another.

#[allow(dead_code)]
#[path = "../it/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../it/stack.rs"]
mod stack;

mod cluster;
