//! Turns what the bot said into Khoros Bot API calls, in order
//! (`docs/vendors/kore-webhook-channel.md`, "Templates" and "Hand-off convention").
//!
//! Each text becomes a `/respond`; quick replies and buttons become `actions`; images and
//! videos become `media`; the `khoros_handoff` template, or a configured completed task,
//! becomes `PUT /control` to AGENT with its comment plus the hand-off tags. Nothing after a
//! hand-off is sent: the bot no longer owns the conversation.

use serde_json::{json, Value};
use shared::event::{Author, Coordinate};
use shared::kore::{BotAnswer, BotItem};

/// One Bot API call.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// `POST /bots/v3/respond` with this body.
    Respond(Value),
    /// `PUT /bots/v3/control` to AGENT with this body.
    Handoff(Value),
    /// `PUT /bots/v3/tag` with this body.
    Tag(Value),
}

impl Step {
    pub fn name(&self) -> &'static str {
        match self {
            Step::Respond(_) => "respond",
            Step::Handoff(_) => "control",
            Step::Tag(_) => "tag",
        }
    }
}

/// What the plan needs to know besides the answer.
pub struct PlanContext<'a> {
    pub coordinate: &'a Coordinate,
    pub author: &'a Author,
    pub bot_reply_tags: &'a [i64],
    pub handoff_tags: &'a [i64],
    pub handoff_task_names: &'a [String],
    /// The bot has not replied in this conversation before (bot-reply tags go on now).
    pub first_reply: bool,
}

impl PlanContext<'_> {
    fn author(&self) -> Value {
        let mut author = json!({ "id": self.author.id });
        if let Some(name) = &self.author.full_name {
            author["fullName"] = json!(name);
        }
        author
    }

    fn respond(&self, text: Option<String>, actions: Vec<Value>, media: Vec<Value>) -> Step {
        let mut body =
            json!({ "type": "message", "coordinate": self.coordinate, "author": self.author() });
        if let Some(text) = text {
            body["text"] = json!(text);
        }
        if !actions.is_empty() {
            body["actions"] = Value::Array(actions);
        }
        if !media.is_empty() {
            body["media"] = Value::Array(media);
        }
        Step::Respond(body)
    }

    fn tag(&self, tag_ids: Vec<i64>) -> Step {
        Step::Tag(json!({
            "type": "tag", "entityType": "POST", "tagIds": tag_ids,
            "coordinate": self.coordinate, "author": self.author(),
        }))
    }

    /// `PUT /control` to AGENT, followed by the hand-off tags when there are any.
    pub fn handoff(&self, comment: &str, extra_tags: &[i64]) -> Vec<Step> {
        let mut steps = vec![Step::Handoff(json!({
            "type": "control", "owner": { "type": "AGENT" },
            "coordinate": self.coordinate, "author": self.author(), "comment": comment,
        }))];
        let mut tags: Vec<i64> = self.handoff_tags.to_vec();
        tags.extend(extra_tags.iter().filter(|t| !self.handoff_tags.contains(t)));
        if !tags.is_empty() {
            steps.push(self.tag(tags));
        }
        steps
    }
}

/// Why a plan hands off, for the `worker_handoffs_total{reason}` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandoffReason {
    BotRequested,
    Task,
}

impl HandoffReason {
    pub fn label(self) -> &'static str {
        match self {
            HandoffReason::BotRequested => "bot_requested",
            HandoffReason::Task => "task",
        }
    }
}

/// The calls for one bot answer, and whether (why) it hands off.
pub fn plan(answer: &BotAnswer, ctx: &PlanContext<'_>) -> (Vec<Step>, Option<HandoffReason>) {
    let mut steps = Vec::new();
    let mut handoff = None;
    for item in &answer.items {
        match item {
            BotItem::Text(text) if text.trim().is_empty() => {}
            BotItem::Text(text) => steps.push(ctx.respond(Some(text.clone()), vec![], vec![])),
            BotItem::Template(template) => match template_step(template, ctx) {
                Mapped::Steps(mut more) => steps.append(&mut more),
                Mapped::Handoff(mut more) => {
                    steps.append(&mut more);
                    handoff = Some(HandoffReason::BotRequested);
                    break;
                }
                Mapped::Nothing => {
                    let kind = template.get("type").and_then(Value::as_str).unwrap_or("?");
                    tracing::warn!(template = kind, "template with nothing to show; skipped");
                }
            },
        }
    }
    if handoff.is_none() {
        if let Some(task) = &answer.completed_task_name {
            if ctx
                .handoff_task_names
                .iter()
                .any(|t| t.eq_ignore_ascii_case(task))
            {
                steps.extend(
                    ctx.handoff(&format!("Kore.ai task \"{task}\" asked for an agent"), &[]),
                );
                handoff = Some(HandoffReason::Task);
            }
        }
    }
    if ctx.first_reply && !ctx.bot_reply_tags.is_empty() {
        if let Some(first) = steps.iter().position(|s| matches!(s, Step::Respond(_))) {
            steps.insert(first, ctx.tag(ctx.bot_reply_tags.to_vec()));
        }
    }
    (steps, handoff)
}

enum Mapped {
    Steps(Vec<Step>),
    Handoff(Vec<Step>),
    Nothing,
}

fn text_of(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
}

fn template_step(template: &Value, ctx: &PlanContext<'_>) -> Mapped {
    let payload = template.get("payload").unwrap_or(&Value::Null);
    let kind = template.get("type").and_then(Value::as_str).unwrap_or("");
    let template_type = payload
        .get("template_type")
        .and_then(Value::as_str)
        .unwrap_or("");
    match (kind, template_type) {
        (_, "khoros_handoff") => {
            let comment = text_of(payload.get("comment"))
                .unwrap_or_else(|| "Kore.ai bot requested an agent".into());
            let tags: Vec<i64> = payload
                .get("tagIds")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default();
            Mapped::Handoff(ctx.handoff(&comment, &tags))
        }
        (_, "quick_replies") => {
            let actions = list(payload, "quick_replies")
                .filter_map(|q| action("reply", q.get("title"), q.get("payload")))
                .collect();
            Mapped::Steps(vec![ctx.respond(
                text_of(payload.get("text")),
                actions,
                vec![],
            )])
        }
        (_, "button") => {
            let mut text = text_of(payload.get("text")).unwrap_or_default();
            let mut actions = Vec::new();
            for button in list(payload, "buttons") {
                match button.get("type").and_then(Value::as_str) {
                    Some("web_url") => {
                        // Khoros documents no URL button: the link goes into the text.
                        let title = text_of(button.get("title")).unwrap_or_default();
                        let url = text_of(button.get("url")).unwrap_or_default();
                        text.push_str(&format!("\n{title}: {url}"));
                    }
                    _ => actions.extend(action(
                        "postback",
                        button.get("title"),
                        button.get("payload"),
                    )),
                }
            }
            Mapped::Steps(vec![ctx.respond(
                Some(text.trim().to_string()).filter(|t| !t.is_empty()),
                actions,
                vec![],
            )])
        }
        (_, "list") => {
            let lines: Vec<String> = list(payload, "elements")
                .map(|e| {
                    let mut line = text_of(e.get("title")).unwrap_or_default();
                    if let Some(sub) = text_of(e.get("subtitle")) {
                        line.push_str(&format!(" - {sub}"));
                    }
                    if let Some(url) = e.pointer("/default_action/url").and_then(Value::as_str) {
                        line.push_str(&format!(" ({url})"));
                    }
                    line
                })
                .collect();
            if lines.is_empty() {
                Mapped::Nothing
            } else {
                Mapped::Steps(vec![ctx.respond(Some(lines.join("\n")), vec![], vec![])])
            }
        }
        ("image" | "video", _) => match text_of(payload.get("url")) {
            Some(url) => {
                let media = json!({ "url": url, "mediaType": kind.to_ascii_uppercase() });
                Mapped::Steps(vec![ctx.respond(None, vec![], vec![media])])
            }
            None => Mapped::Nothing,
        },
        ("message", _) => {
            let link =
                text_of(payload.get("audioUrl")).or_else(|| text_of(payload.get("videoUrl")));
            let text = [text_of(payload.get("text")), link]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("\n");
            if text.is_empty() {
                Mapped::Nothing
            } else {
                Mapped::Steps(vec![ctx.respond(Some(text), vec![], vec![])])
            }
        }
        _ => match text_of(payload.get("text")).or_else(|| text_of(template.get("text"))) {
            Some(text) => Mapped::Steps(vec![ctx.respond(Some(text), vec![], vec![])]),
            None => Mapped::Nothing,
        },
    }
}

fn list<'a>(payload: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    payload
        .get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn action(kind: &str, title: Option<&Value>, payload: Option<&Value>) -> Option<Value> {
    let text = text_of(title)?;
    let payload = text_of(payload).unwrap_or_else(|| text.clone());
    Some(json!({ "type": kind, "text": text, "payload": payload }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(
        coordinate: &'a Coordinate,
        author: &'a Author,
        tasks: &'a [String],
    ) -> PlanContext<'a> {
        PlanContext {
            coordinate,
            author,
            bot_reply_tags: &[11],
            handoff_tags: &[22],
            handoff_task_names: tasks,
            first_reply: true,
        }
    }

    #[test]
    fn texts_quick_replies_buttons_and_media_map_to_respond() {
        let (c, a) = (
            Coordinate {
                network_key: Some("n".into()),
                ..Default::default()
            },
            Author {
                id: "u".into(),
                ..Default::default()
            },
        );
        let answer = BotAnswer::from_v1(&json!({"text": [
            "Shipped.",
            {"type":"template","payload":{"template_type":"quick_replies","text":"More?","quick_replies":[{"content_type":"text","title":"Yes","payload":"YES"}]}},
            {"type":"template","payload":{"template_type":"button","text":"Next?","buttons":[{"type":"postback","title":"Start","payload":"START"},{"type":"web_url","title":"Help","url":"https://h"}]}},
            {"type":"image","payload":{"url":"https://cdn/a.png"}}
        ]}));
        let (steps, handoff) = plan(&answer, &ctx(&c, &a, &[]));
        assert_eq!(handoff, None);
        let names: Vec<_> = steps.iter().map(Step::name).collect();
        assert_eq!(names, ["tag", "respond", "respond", "respond", "respond"]);
        let Step::Respond(qr) = &steps[2] else {
            panic!()
        };
        assert_eq!(
            qr["actions"],
            json!([{"type":"reply","text":"Yes","payload":"YES"}])
        );
        let Step::Respond(b) = &steps[3] else {
            panic!()
        };
        assert_eq!(b["text"], "Next?\nHelp: https://h");
        assert_eq!(b["actions"][0]["type"], "postback");
        let Step::Respond(m) = &steps[4] else {
            panic!()
        };
        assert_eq!(
            m["media"][0],
            json!({"url":"https://cdn/a.png","mediaType":"IMAGE"})
        );
    }

    #[test]
    fn handoff_template_stops_the_plan_and_tags() {
        let (c, a) = (
            Coordinate::default(),
            Author {
                id: "u".into(),
                ..Default::default()
            },
        );
        let answer = BotAnswer::from_v1(&json!({"text": [
            "Let me get someone.",
            {"type":"template","payload":{"template_type":"khoros_handoff","comment":"billing dispute","tagIds":[4107]}},
            "never sent"
        ]}));
        let (steps, handoff) = plan(&answer, &ctx(&c, &a, &[]));
        assert_eq!(handoff, Some(HandoffReason::BotRequested));
        let names: Vec<_> = steps.iter().map(Step::name).collect();
        assert_eq!(names, ["tag", "respond", "control", "tag"]);
        let Step::Handoff(body) = &steps[2] else {
            panic!()
        };
        assert_eq!(body["owner"], json!({"type":"AGENT"}));
        assert_eq!(body["comment"], "billing dispute");
        let Step::Tag(tags) = &steps[3] else { panic!() };
        assert_eq!(tags["tagIds"], json!([22, 4107]));
    }

    #[test]
    fn configured_task_names_hand_off() {
        let (c, a) = (Coordinate::default(), Author::default());
        let tasks = vec!["Talk To Agent".to_string()];
        let answer = BotAnswer::from_v1(
            &json!({"text": "Connecting you.", "completedTaskName": "talk to agent"}),
        );
        let (steps, handoff) = plan(
            &answer,
            &PlanContext {
                first_reply: false,
                ..ctx(&c, &a, &tasks)
            },
        );
        assert_eq!(handoff, Some(HandoffReason::Task));
        assert_eq!(
            steps.iter().map(Step::name).collect::<Vec<_>>(),
            ["respond", "control", "tag"]
        );
    }
}
