//! Update (CREATED, CLOSED, AGENT_RESPONSE, others) and control events: they keep the
//! conversation record current. CLOSED resets ownership to BOT and drops the record later.

use std::sync::Arc;

use shared::event::{Event, Operation, Owner};

use super::{Delivered, Handlers, Settle};
use crate::conversation::Conversations;
use crate::error::WorkerError;
use crate::telemetry;

pub async fn handle(
    h: &Arc<Handlers>,
    env: &Delivered,
) -> Result<(Settle, &'static str), WorkerError> {
    let Some(event) = h.parse_or_dead_letter::<Event>(env, "an event").await? else {
        return Ok((Settle::Term, "dead_lettered"));
    };
    let now = env.headers.received_at_ms.unwrap_or_else(|| h.now_ms());
    let app_id = h.config.app_id.clone();
    let label: String = match &event {
        Event::Update(update) => {
            let key = Conversations::key(&update.coordinate, &update.author);
            let display_id = update
                .conversation
                .as_ref()
                .and_then(|c| c.display_id.clone());
            match &update.operation {
                Operation::Created => {
                    h.conversations
                        .modify(&key, |r| {
                            r.coordinate = update.coordinate.clone();
                            r.author = update.author.clone();
                            r.display_id = display_id.clone().or(r.display_id.take());
                            r.closed_at_ms = None;
                        })
                        .await?;
                }
                Operation::Closed => {
                    let record = h
                        .conversations
                        .modify(&key, |r| {
                            r.closed_at_ms = Some(now);
                            r.owner = Some(Owner::bot(&app_id));
                            r.owner_updated_at_ms = now;
                            r.bot_tagged = false;
                        })
                        .await?;
                    if let Some(closed_at) = record.closed_at_ms {
                        h.conversations
                            .remove_after(key, closed_at, h.config.closed_grace);
                    }
                }
                Operation::AgentResponse | Operation::Other(_) => {
                    if let Some(id) = display_id {
                        h.conversations
                            .modify(&key, |r| r.display_id = Some(id.clone()))
                            .await?;
                    }
                }
            }
            update.operation.as_str().to_string()
        }
        Event::Control(control) => {
            let key = Conversations::key(&control.coordinate, &control.author);
            h.conversations
                .modify(&key, |r| {
                    // Only move forward: an older control event must not undo a newer change.
                    if now >= r.owner_updated_at_ms {
                        r.owner = Some(control.owner.clone());
                        r.owner_updated_at_ms = now;
                    }
                    if let Some(id) = &control.conversation_display_id {
                        r.display_id = Some(id.clone());
                    }
                })
                .await?;
            "control".to_string()
        }
        Event::Message(_) | Event::Other(_) => "ignored".to_string(),
    };
    let label = match label.as_str() {
        "CREATED" | "CLOSED" | "AGENT_RESPONSE" | "control" | "ignored" => label,
        _ => "other".to_string(),
    };
    tracing::info!(operation = %label, "conversation record updated");
    metrics::counter!(telemetry::UPDATES, "operation" => label).increment(1);
    Ok((Settle::Ack, "applied"))
}
