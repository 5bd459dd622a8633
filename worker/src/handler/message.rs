//! A customer's message: owner check, idempotency, ask Kore.ai (following V2 polls of a slow
//! turn, or opening an async turn), reply through Khoros via the delivery state machine.

use std::sync::Arc;

use serde_json::json;
use shared::contract::ConversationKey;
use shared::event::MessageEvent;
use shared::kore::{Polled, SyncAnswer, UserTurn};
use shared::upstream::{count_retry, UpstreamError};

use super::{Delivered, Handlers, Settle};
use crate::conversation::ConversationRecord;
use crate::error::WorkerError;
use crate::progress::{PollState, Progress};
use crate::reply;
use crate::telemetry;
use crate::turns::Turn;

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
    env: &Delivered,
) -> Result<(Settle, &'static str), WorkerError> {
    let Some(event) = h
        .parse_or_dead_letter::<MessageEvent>(env, "a message event")
        .await?
    else {
        return Ok((Settle::Term, "dead_lettered"));
    };
    let conversation = ConversationKey {
        network: event.coordinate.network_key.as_deref().unwrap_or(""),
        external_id: event.coordinate.external_id.as_deref().unwrap_or(""),
        author_id: &event.author.id,
    };
    let key = shared::contract::keys::conversation(&conversation);
    let received_at = env.headers.received_at_ms.unwrap_or_else(|| h.now_ms());
    let seen = h.conversations.read(&key).await?;
    if let Some(reason) = skip_reason(&event, seen.record.as_ref(), &h.config.app_id, received_at) {
        metrics::counter!(telemetry::SKIPPED, "reason" => reason).increment(1);
        tracing::info!(reason, "message not for the bot; acknowledged");
        return Ok((Settle::Ack, "skipped"));
    }

    let mut tracked = h.progress.load(&env.event_id).await?;
    if tracked.progress.done {
        tracing::info!("event already answered; duplicate delivery ignored");
        return Ok((Settle::Ack, "duplicate"));
    }

    // Keep where to reply (async deliveries, later updates) and the Kore user id given at first
    // contact, so a rotated id key only affects conversations that start afterwards.
    let coordinate = event.coordinate.clone();
    let author = event.author.clone();
    let fresh_user = h.identity.user_id(&conversation);
    let record = h
        .conversations
        .modify_seen(&key, seen, |r| {
            r.coordinate = coordinate.clone();
            r.author = author.clone();
            r.closed_at_ms = None;
            if r.owner.is_none() {
                r.owner = event.owner.clone();
            }
            if r.kore_user.is_none() {
                r.kore_user = Some(fresh_user.clone());
            }
        })
        .await?;
    let kore_user = record.kore_user.clone().unwrap_or(fresh_user);

    let progress = &mut tracked.progress;
    if progress.answer.is_none() && progress.bot_failure.is_none() {
        match ask_bot(h, env, &event, &record, &key, &kore_user).await? {
            Asked::Answer(sync) => {
                progress.poll = sync.poll_id.map(|poll_id| PollState {
                    poll_id,
                    started_at_ms: h.now_ms(),
                });
                progress.answer = Some(sync.answer);
            }
            Asked::Async => {
                h.finish(env, &mut tracked).await?;
                return Ok((Settle::Ack, "sent_to_bot"));
            }
            Asked::Failed(reason) => progress.bot_failure = Some(reason),
        }
        // Recorded with the first step's claim (one write less); a crash before that asks
        // Kore.ai again, as a crash during the call would.
    }

    let first_reply = !record.bot_tagged;
    let ctx = h.plan_context(&event.coordinate, &event.author, first_reply);
    // Deliver what the bot said so far; while Kore.ai is still working (V2 `pollId`), collect
    // the next part and deliver it too. Plans of a longer answer extend the shorter one's, so
    // the steps already done stay done.
    let (outcome, responded) = loop {
        let (steps, outcome) = plan(&tracked.progress, &ctx);
        let settle = h.deliver(env, &mut tracked, &steps, &key).await?;
        if settle == Settle::Term {
            return Ok((Settle::Term, "dead_lettered"));
        }
        if tracked.progress.poll.is_none() {
            let responded = steps.iter().any(|s| matches!(s, reply::Step::Respond(_)));
            break (outcome, responded);
        }
        poll_more(h, env, &mut tracked, &kore_user).await?;
    };
    // Only remembered when there are tags to apply once (saves a KV round trip otherwise).
    if first_reply && responded && !h.config.bot_reply_tags.is_empty() {
        h.conversations
            .modify(&key, |r| r.bot_tagged = true)
            .await?;
    }
    h.finish(env, &mut tracked).await?;
    Ok((Settle::Ack, outcome))
}

/// The steps for what the bot said so far (or for its failure), and the outcome label.
fn plan(progress: &Progress, ctx: &reply::PlanContext<'_>) -> (Vec<reply::Step>, &'static str) {
    match (&progress.answer, &progress.bot_failure) {
        (Some(answer), _) => {
            let (mut steps, handoff) = reply::plan(answer, ctx);
            if let Some(reason) = handoff {
                count_handoff(progress, reason.label());
                return (steps, "handed_off");
            }
            if let Some(why) = &progress.incomplete {
                // The rest of the turn is lost: an agent takes over after what did arrive.
                count_handoff(progress, "kore_incomplete");
                steps.extend(ctx.handoff(
                    &format!("The virtual assistant did not finish its answer ({why}); please take over."),
                    &[],
                ));
                return (steps, "handed_off");
            }
            (steps, "replied")
        }
        (None, Some(reason)) => {
            let label = if reason.starts_with("breaker") {
                "breaker_open"
            } else {
                "kore_unavailable"
            };
            count_handoff(progress, label);
            let comment =
                format!("The virtual assistant could not answer ({reason}); please take over.");
            (ctx.handoff(&comment, &[]), "handed_off")
        }
        (None, None) => (Vec::new(), "replied"),
    }
}

/// Counts a hand-off once, when its plan is final (not for every polled part).
fn count_handoff(progress: &Progress, reason: &'static str) {
    if progress.poll.is_none() {
        metrics::counter!(telemetry::HANDOFFS, "reason" => reason).increment(1);
    }
}

/// Polls Kore.ai until the next part of the turn arrives, the turn ends, or the poll budget
/// (`KORE_POLL_TIMEOUT` from the turn's start) is spent; records the result.
async fn poll_more(
    h: &Handlers,
    env: &Delivered,
    tracked: &mut crate::progress::Tracked,
    kore_user: &str,
) -> Result<(), WorkerError> {
    let Some(poll) = tracked.progress.poll.clone() else {
        return Ok(());
    };
    let give_up_at = poll.started_at_ms + h.config.kore_poll_timeout.as_millis() as i64;
    let progress = &mut tracked.progress;
    loop {
        if h.now_ms() >= give_up_at {
            tracing::warn!(poll_id = %poll.poll_id, "kore.ai turn still running after the poll timeout; handing off");
            progress.poll = None;
            progress.incomplete = Some(format!(
                "still working after {}s",
                h.config.kore_poll_timeout.as_secs()
            ));
            break;
        }
        tokio::time::sleep(h.config.kore_poll_interval).await;
        match h
            .kore
            .poll(kore_user, &poll.poll_id, h.now_ms() / 1000)
            .await
        {
            Ok(Polled::InProgress) => continue,
            Ok(Polled::Ready(more)) => {
                let answer = progress.answer.get_or_insert_with(Default::default);
                answer.items.extend(more.answer.items);
                if more.answer.completed_task_name.is_some() {
                    answer.completed_task_name = more.answer.completed_task_name;
                }
                answer.end_of_task |= more.answer.end_of_task;
                progress.poll = more.poll_id.map(|poll_id| PollState {
                    poll_id,
                    started_at_ms: poll.started_at_ms,
                });
                break;
            }
            Ok(Polled::Gone) => {
                // Collected already (by a run that crashed before recording it) or expired.
                tracing::warn!(poll_id = %poll.poll_id, "kore.ai has nothing for the poll id; handing off");
                progress.poll = None;
                progress.incomplete = Some("the rest of the answer was not available".into());
                break;
            }
            Err(e) if shared::retry::RetryClass::is_retryable(&e) => {
                tracing::warn!(error = %e, "kore.ai poll failed; polling again");
            }
            Err(e) => {
                tracing::warn!(error = %e, "kore.ai poll refused; handing off");
                progress.poll = None;
                progress.incomplete = Some(format!("polling failed: {}", e.status_label()));
                break;
            }
        }
    }
    h.progress.save(&env.event_id, tracked).await
}

enum Asked {
    Answer(SyncAnswer),
    /// Async mode: Kore.ai acknowledged; the answer arrives at the callback.
    Async,
    /// The bot could not answer; the customer goes to an agent.
    Failed(String),
}

async fn ask_bot(
    h: &Handlers,
    env: &Delivered,
    event: &MessageEvent,
    record: &ConversationRecord,
    key: &str,
    kore_user: &str,
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
    // The dialog sees the conversation details, but no author id: Kore.ai knows the customer
    // only by the keyed id (`crate::identity`).
    let turn = UserTurn {
        user_id: kore_user.to_string(),
        first_name: event.author.full_name.clone(),
        text,
        attachments: event.media.iter().map(|m| m.url.clone()).collect(),
        custom_data: json!({
            "khoros": {
                "conversationDisplayId": record.display_id,
                "networkKey": event.coordinate.network_key,
                "externalId": event.coordinate.external_id,
            }
        }),
    };
    let asynchronous = h.kore.config().mode == shared::kore::KoreMode::Async;
    if asynchronous {
        // Before the call: a fast delivery must find its turn.
        let now = h.now_ms();
        let turn = Turn {
            conversation: key.to_string(),
            event_id: env.event_id.clone(),
            opened_at_ms: now,
            deadline_ms: now + h.config.kore_async_deadline.as_millis() as i64,
            deliveries: 0,
        };
        h.turns.open(kore_user, &turn).await?;
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
            Ok(Asked::Answer(sync))
        }
        Ok(None) => {
            h.breaker.record_success();
            Ok(Asked::Async)
        }
        Err(e) => {
            h.breaker.record_failure();
            if asynchronous {
                h.turns.close(kore_user, &env.event_id).await?;
            }
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
