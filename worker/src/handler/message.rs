//! A customer's message: owner check, idempotency, ask Kore.ai, reply through Khoros.

use std::sync::Arc;

use serde_json::json;
use shared::event::MessageEvent;
use shared::kore::UserTurn;
use shared::upstream::{count_retry, UpstreamError};

use super::{Envelope, Handlers, Settle};
use crate::conversation::{ConversationRecord, Conversations};
use crate::error::WorkerError;
use crate::reply;
use crate::telemetry;

/// Why a message is not answered (label of `worker_skipped_total`).
fn skip_reason(
    event: &MessageEvent,
    record: Option<&ConversationRecord>,
    app_id: &str,
    received_at_ms: i64,
) -> Option<&'static str> {
    match &event.owner {
        None => return Some("no_owner"),
        Some(owner) if owner.kind == "AGENT" => return Some("agent_owned"),
        Some(owner) if !owner.is_bot(app_id) => return Some("other_owner"),
        Some(_) => {}
    }
    // Khoros stamped the owner when it sent the event; if we handed the conversation to an agent
    // after this event reached the ingress, the stamp is stale and the agent owns it now.
    match record.and_then(|r| r.owner.as_ref().map(|o| (o, r.owner_updated_at_ms))) {
        Some((owner, changed_at)) if !owner.is_bot(app_id) && changed_at > received_at_ms => {
            Some("handed_off")
        }
        _ => None,
    }
}

pub async fn handle(
    h: &Arc<Handlers>,
    env: &Envelope,
) -> Result<(Settle, &'static str), WorkerError> {
    let Some(event) = h
        .parse_or_dead_letter::<MessageEvent>(env, "a message event")
        .await?
    else {
        return Ok((Settle::Term, "dead_lettered"));
    };
    let key = Conversations::key(&event.coordinate, &event.author);
    let received_at = env.received_at_ms.unwrap_or_else(|| h.now_ms());
    let record = h.conversations.get(&key).await?;
    if let Some(reason) = skip_reason(&event, record.as_ref(), &h.config.app_id, received_at) {
        metrics::counter!(telemetry::SKIPPED, "reason" => reason).increment(1);
        tracing::info!(reason, "message not for the bot; acknowledged");
        return Ok((Settle::Ack, "skipped"));
    }

    let mut progress = h.progress.load(&env.event_id).await?;
    if progress.done {
        tracing::info!("event already answered; duplicate delivery ignored");
        return Ok((Settle::Ack, "duplicate"));
    }

    // Keep where to reply, for async deliveries and for updates that arrive later.
    let coordinate = event.coordinate.clone();
    let author = event.author.clone();
    let record = h
        .conversations
        .modify(&key, |r| {
            r.coordinate = coordinate.clone();
            r.author = author.clone();
            r.closed_at_ms = None;
            if r.owner.is_none() {
                r.owner = event.owner.clone();
            }
        })
        .await?;

    if progress.answer.is_none() && progress.bot_failure.is_none() {
        match ask_bot(h, &event, &record, &key).await? {
            Asked::Answer(answer) => progress.answer = Some(answer),
            Asked::Async => {
                progress.done = true;
                h.progress.save(&env.event_id, &progress).await?;
                return Ok((Settle::Ack, "sent_to_bot"));
            }
            Asked::Failed(reason) => progress.bot_failure = Some(reason),
        }
        h.progress.save(&env.event_id, &progress).await?;
    }

    let first_reply = !record.bot_tagged;
    let ctx = h.plan_context(&event.coordinate, &event.author, first_reply);
    let (steps, outcome) = match (&progress.answer, &progress.bot_failure) {
        (Some(answer), _) => {
            let (steps, handoff) = reply::plan(answer, &ctx);
            if let Some(reason) = handoff {
                metrics::counter!(telemetry::HANDOFFS, "reason" => reason.label()).increment(1);
            }
            (
                steps,
                if handoff.is_some() {
                    "handed_off"
                } else {
                    "replied"
                },
            )
        }
        (None, Some(reason)) => {
            let label = if reason.starts_with("breaker") {
                "breaker_open"
            } else {
                "kore_unavailable"
            };
            metrics::counter!(telemetry::HANDOFFS, "reason" => label).increment(1);
            let comment =
                format!("The virtual assistant could not answer ({reason}); please take over.");
            (ctx.handoff(&comment, &[]), "handed_off")
        }
        (None, None) => unreachable!("an answer or a failure was recorded above"),
    };
    let settle = h
        .deliver_reply(env, &mut progress, &steps, &key, first_reply)
        .await?;
    Ok((
        settle,
        if settle == Settle::Ack {
            outcome
        } else {
            "dead_lettered"
        },
    ))
}

enum Asked {
    Answer(shared::kore::BotAnswer),
    /// Async mode: Kore.ai acknowledged; the answer arrives at the callback.
    Async,
    /// The bot could not answer; the customer goes to an agent.
    Failed(String),
}

async fn ask_bot(
    h: &Handlers,
    event: &MessageEvent,
    record: &ConversationRecord,
    key: &str,
) -> Result<Asked, WorkerError> {
    if !h.breaker.allow() {
        return Ok(Asked::Failed(
            "breaker open after repeated Kore.ai failures".into(),
        ));
    }
    let text = match (&event.text, event.actions.first()) {
        // A tapped quick reply or button: the bot expects its payload
        // (`docs/vendors/kore-webhook-channel.md`, "V2 request").
        (_, Some(action)) if !action.payload.is_empty() => action.payload.clone(),
        (Some(text), _) => text.clone(),
        _ => String::new(),
    };
    let turn = UserTurn {
        user_id: event.author.id.clone(),
        first_name: event.author.full_name.clone(),
        text,
        attachments: event.media.iter().map(|m| m.url.clone()).collect(),
        custom_data: json!({
            "khoros": {
                "coordinate": event.coordinate,
                "author": { "id": event.author.id, "fullName": event.author.full_name },
                "conversationDisplayId": record.display_id,
                "networkKey": event.coordinate.network_key,
            }
        }),
    };
    if h.kore.config().mode == shared::kore::KoreMode::Async {
        h.conversations.index_user(&event.author.id, key).await?;
    }
    let now_s = h.now_ms() / 1000;
    let result = shared::retry::retry(
        h.config.kore_retry,
        || h.kore.send(&turn, now_s),
        |e: &UpstreamError, wait| {
            count_retry("kore", "webhook");
            tracing::warn!(error = %e, retry_in = ?wait, "kore.ai call failed; retrying");
        },
    )
    .await;
    match result {
        Ok(Some(sync)) => {
            h.breaker.record_success();
            Ok(Asked::Answer(sync.answer))
        }
        Ok(None) => {
            h.breaker.record_success();
            Ok(Asked::Async)
        }
        Err(e) => {
            h.breaker.record_failure();
            tracing::error!(error = %e, "kore.ai could not answer; handing off");
            Ok(Asked::Failed(match e.status() {
                Some(status) => format!("Kore.ai answered {status}"),
                None => format!("Kore.ai {}", e.status_label()),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::event::Owner;

    fn event(owner: Option<Owner>) -> MessageEvent {
        MessageEvent {
            owner,
            ..Default::default()
        }
    }

    #[test]
    fn only_our_bot_engages() {
        assert_eq!(
            skip_reason(
                &event(Some(Owner::bot("kore-bridge"))),
                None,
                "kore-bridge",
                0
            ),
            None
        );
        assert_eq!(
            skip_reason(&event(Some(Owner::agent())), None, "kore-bridge", 0),
            Some("agent_owned")
        );
        assert_eq!(
            skip_reason(&event(Some(Owner::bot("other"))), None, "kore-bridge", 0),
            Some("other_owner")
        );
        assert_eq!(
            skip_reason(&event(None), None, "kore-bridge", 0),
            Some("no_owner")
        );
        let handed = ConversationRecord {
            owner: Some(Owner::agent()),
            owner_updated_at_ms: 100,
            ..Default::default()
        };
        assert_eq!(
            skip_reason(
                &event(Some(Owner::bot("kore-bridge"))),
                Some(&handed),
                "kore-bridge",
                50
            ),
            Some("handed_off")
        );
        assert_eq!(
            skip_reason(
                &event(Some(Owner::bot("kore-bridge"))),
                Some(&handed),
                "kore-bridge",
                150
            ),
            None
        );
    }
}
