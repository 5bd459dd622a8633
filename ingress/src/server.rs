//! The public HTTP listener, hardened for hostile clients: a cap on open connections, a
//! deadline for request headers (which also closes idle keep-alive connections), and
//! graceful draining at shutdown. Body deadlines and budgets are per request, in
//! [`crate::body`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Limits of the public listener (see the README's configuration table).
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// `MAX_CONNECTIONS`: open connections at once; further ones wait in the kernel's
    /// accept queue. Kept below the file-descriptor limit, so a flood of connections cannot
    /// starve the NATS connection and the process of descriptors.
    pub max_connections: usize,
    /// `HEADER_READ_TIMEOUT`: a request's headers must arrive within this; an idle
    /// keep-alive connection is closed after it too.
    pub header_read_timeout: Duration,
}

/// Raises the soft limit on open files to the hard limit (Linux defaults the soft limit to
/// 1,024, which a thousand idle connections exhaust) and returns the limit now in force.
pub fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(error) => {
            tracing::warn!(%error, "could not raise the open-file limit");
            None
        }
    }
}

/// Accepts connections until `shutdown`, then lets open requests finish for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning; the
                    // connection stays in the accept queue and is taken on the next turn.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are the client's (reset, header timeout, malformed request).
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!("in-flight requests did not finish within the shutdown timeout");
        }
    }
}
