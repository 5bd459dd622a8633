//! The Bot API token: read from KV (the scheduler owns the record), watched, swapped at once.

use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use futures::StreamExt;
use shared::token::{TokenRecord, TOKEN_KEY};
use shared::Secret;
use tokio_util::sync::CancellationToken;

use crate::error::WorkerError;
use crate::telemetry;

/// The current token, shared by every handler.
#[derive(Clone)]
pub struct TokenSource {
    current: Arc<RwLock<Option<Secret>>>,
    store: kv::Store,
}

impl TokenSource {
    /// Reads the token and watches it until `stop`. Only the scheduler writes the record
    /// (`docs/decisions.md`, "Tokens live in NATS KV"); until it does, there is no token.
    pub async fn start(store: kv::Store, stop: CancellationToken) -> Result<Self, WorkerError> {
        let source = Self {
            current: Arc::default(),
            store,
        };
        source.reload().await?;
        let watch = source.clone().watch();
        tokio::spawn(async move {
            tokio::select! {
                () = watch => {}
                () = stop.cancelled() => {}
            }
        });
        Ok(source)
    }

    /// The token to use now; `None` until one exists in KV.
    pub fn current(&self) -> Option<Secret> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads KV again (after a 401). Returns whether the token changed.
    pub async fn reload(&self) -> Result<bool, WorkerError> {
        let stored = self
            .store
            .get(TOKEN_KEY)
            .await
            .map_err(WorkerError::infra)?;
        Ok(self.apply(stored.as_deref()))
    }

    fn apply(&self, bytes: Option<&[u8]>) -> bool {
        let Some(record) = bytes.and_then(|b| serde_json::from_slice::<TokenRecord>(b).ok()) else {
            return false;
        };
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let changed = current.as_ref().map(Secret::expose) != Some(record.token.as_str());
        if changed {
            *current = Some(record.secret());
        }
        changed
    }

    async fn watch(self) {
        let this = self;
        {
            loop {
                // A rotation may have happened while the watch was down.
                if let Ok(true) = this.reload().await {
                    metrics::counter!(telemetry::TOKEN_SWAPS).increment(1);
                }
                match this.store.watch(TOKEN_KEY).await {
                    Ok(mut updates) => {
                        while let Some(update) = updates.next().await {
                            let Ok(entry) = update else { break };
                            if entry.operation == kv::Operation::Put
                                && this.apply(Some(&entry.value))
                            {
                                metrics::counter!(telemetry::TOKEN_SWAPS).increment(1);
                                tracing::info!(revision = entry.revision, "bot api token swapped");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "token watch failed; retrying"),
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}
