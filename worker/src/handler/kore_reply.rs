//! Kore.ai asynchronous deliveries (stored by the ingress' `/kore/callback`) and the worker's
//! own turn-deadline markers, both on `kore.replies.<partition>` (`crate::turns`).
//!
//! A delivery is answered only while its user's turn is outstanding: the turn names the
//! conversation, and the reply goes there through the delivery state machine. A deadline
//! marker that falls due on a turn that got no delivery hands the customer to an agent.

use std::sync::Arc;

use serde_json::Value;
use shared::kore::{delivery_recipient, BotAnswer};

use super::{Delivered, Handlers, Settle};
use crate::error::WorkerError;
use crate::reply;
use crate::telemetry;
use crate::turns::DeadlineMarker;

pub async fn handle(
    h: &Arc<Handlers>,
    env: &Delivered,
) -> Result<(Settle, &'static str), WorkerError> {
    if env.headers.turn_deadline_ms.is_some() {
        return deadline(h, env).await;
    }
    let Some(value) = h.parse_or_dead_letter::<Value>(env, "JSON").await? else {
        return Ok((Settle::Term, "dead_lettered"));
    };
    let Some(user) = delivery_recipient(&value) else {
        h.dead_letter(
            env,
            "route",
            "-",
            "Kore.ai delivery without `to`",
            "",
            env.delivered as u64,
        )
        .await?;
        return Ok((Settle::Term, "dead_lettered"));
    };
    let mut tracked = h.progress.load(&env.event_id).await?;
    if tracked.progress.done {
        return Ok((Settle::Ack, "duplicate"));
    }
    // The ingress refuses deliveries without a turn; the turn may have ended since.
    let Some((turn, revision)) = h.turns.get(user).await? else {
        metrics::counter!(telemetry::SKIPPED, "reason" => "no_turn").increment(1);
        tracing::warn!("kore.ai delivery for a user with no turn outstanding; dropped");
        return Ok((Settle::Ack, "skipped"));
    };
    let Some(record) = h.conversations.get(&turn.conversation).await? else {
        h.dead_letter(
            env,
            "route",
            "-",
            "the turn's conversation record is gone",
            "",
            env.delivered as u64,
        )
        .await?;
        return Ok((Settle::Term, "dead_lettered"));
    };
    let key = turn.conversation.clone();
    h.turns.delivered(user, turn, revision).await;
    if record
        .owner
        .as_ref()
        .is_some_and(|o| !o.is_bot(&h.config.app_id))
    {
        metrics::counter!(telemetry::SKIPPED, "reason" => "handed_off").increment(1);
        return Ok((Settle::Ack, "skipped"));
    }
    let answer = BotAnswer::from_any(&value);
    let first_reply = !record.bot_tagged;
    let ctx = h.plan_context(&record.coordinate, &record.author, first_reply);
    let (steps, handoff) = reply::plan(&answer, &ctx);
    if let Some(reason) = handoff {
        metrics::counter!(telemetry::HANDOFFS, "reason" => reason.label()).increment(1);
    }
    let settle = h
        .deliver_reply(env, &mut tracked, &steps, &key, first_reply)
        .await?;
    if settle == Settle::Term {
        return Ok((settle, "dead_lettered"));
    }
    h.finish(env, &mut tracked).await?;
    Ok((
        settle,
        if handoff.is_some() {
            "handed_off"
        } else {
            "replied"
        },
    ))
}

/// A turn's deadline fell due: hand off if Kore.ai never answered, then end the turn.
async fn deadline(
    h: &Arc<Handlers>,
    env: &Delivered,
) -> Result<(Settle, &'static str), WorkerError> {
    let Some(marker) = h
        .parse_or_dead_letter::<DeadlineMarker>(env, "a turn deadline marker")
        .await?
    else {
        return Ok((Settle::Term, "dead_lettered"));
    };
    let turn = match h.turns.get(&marker.to).await? {
        Some((turn, _)) if turn.event_id == marker.event_id => turn,
        // A newer turn replaced it, or it was closed.
        _ => return Ok((Settle::Ack, "turn_closed")),
    };
    let mut outcome = "turn_closed";
    if turn.deliveries == 0 {
        let mut tracked = h.progress.load(&env.event_id).await?;
        let record = h.conversations.get(&turn.conversation).await?;
        let bot_owned = record
            .as_ref()
            .is_some_and(|r| r.owner.as_ref().is_none_or(|o| o.is_bot(&h.config.app_id)));
        if let (false, true, Some(record)) = (tracked.progress.done, bot_owned, record) {
            tracing::warn!("kore.ai did not answer the turn in time; handing off");
            let ctx = h.plan_context(&record.coordinate, &record.author, false);
            let comment = format!(
                "The virtual assistant did not answer within {}s; please take over.",
                h.config.kore_async_deadline.as_secs()
            );
            let steps = ctx.handoff(&comment, &[]);
            if h.deliver(env, &mut tracked, &steps, &turn.conversation)
                .await?
                == Settle::Term
            {
                return Ok((Settle::Term, "dead_lettered"));
            }
            h.finish(env, &mut tracked).await?;
            metrics::counter!(telemetry::HANDOFFS, "reason" => "kore_timeout").increment(1);
            outcome = "handed_off";
        }
    }
    h.turns.close(&marker.to, &marker.event_id).await?;
    Ok((Settle::Ack, outcome))
}
