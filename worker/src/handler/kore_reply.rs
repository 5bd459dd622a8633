//! A Kore.ai asynchronous delivery (stored by the ingress' `/kore/callback`): find the Khoros
//! conversation of its `to` user and reply there, in order.

use std::sync::Arc;

use serde_json::Value;
use shared::kore::{delivery_recipient, BotAnswer};

use super::{Envelope, Handlers, Settle};
use crate::error::WorkerError;
use crate::reply;
use crate::telemetry;

pub async fn handle(
    h: &Arc<Handlers>,
    env: &Envelope,
) -> Result<(Settle, &'static str), WorkerError> {
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
    let Some((key, record)) = h.conversations.by_user(user).await? else {
        h.dead_letter(
            env,
            "route",
            "-",
            "no conversation known for this Kore.ai user",
            "",
            env.delivered as u64,
        )
        .await?;
        return Ok((Settle::Term, "dead_lettered"));
    };
    let mut progress = h.progress.load(&env.event_id).await?;
    if progress.done {
        return Ok((Settle::Ack, "duplicate"));
    }
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
        .deliver_reply(env, &mut progress, &steps, &key, first_reply)
        .await?;
    let outcome = match (settle, handoff) {
        (Settle::Term, _) => "dead_lettered",
        (_, Some(_)) => "handed_off",
        _ => "replied",
    };
    Ok((settle, outcome))
}
