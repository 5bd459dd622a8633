//! Fault injection per gateway route: forced statuses, added latency, dropped connections,
//! for the next N calls and/or a percentage of calls.
//!
//! By default a fault strikes before the call is processed: nothing happens and the client
//! gets the fault. With `"after": true` the call is carried out first (its effect happens and
//! its request-log record is written with the real outcome), and only then is the answer
//! spoiled: `latencyMs` is waited, `status` replaces the real answer, `drop` closes the
//! connection. This models "the call succeeded and the answer was lost", which is what makes
//! a blind resend of `/respond` reach the customer twice.
//!
//! Route names: `respond`, `control` (PUT), `control_get`, `tag` (tag and tag/remove),
//! `priority`, `note`, `workqueue`, `resolve`, `authors`, `request`, `tokens` (refresh and
//! DELETE), `health`, `token_create` (the Care instance host of
//! `docs/vendors/khoros-bot-api-v3.md`, "Create the first token"), and `*` for all of them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SimError;

/// Every route a fault can name.
pub const ROUTES: &[&str] = &[
    "respond",
    "control",
    "control_get",
    "tag",
    "priority",
    "note",
    "workqueue",
    "resolve",
    "authors",
    "request",
    "tokens",
    "health",
    "token_create",
];

/// One rule. JSON (`POST /sim/faults`):
/// `{"route":"respond","status":503,"times":2}`,
/// `{"route":"respond","status":429,"retryAfterSecs":3}`,
/// `{"route":"control","latencyMs":1500,"percent":50}`, `{"route":"tag","drop":true,"times":1}`,
/// `{"route":"respond","status":503,"after":true,"times":1}` (sent, but the client sees 503).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    pub route: String,
    /// Answer with this status (400..=599) and the error body `docs/vendors/khoros-bot-api-v3.md`
    /// gives for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// `Retry-After` seconds (sent with any forced status, typically 429 or 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    /// Replaces the default text in the error body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Wait this long before answering (alone: the call then proceeds normally).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Close the connection without any response.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop: bool,
    /// Strike after the call was carried out (see the module doc), not before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after: bool,
    /// Apply to this many calls, then disappear; `None` = until cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    /// Apply to this share of calls (0..=100); `None` = every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
}

impl Fault {
    fn new(route: &str) -> Self {
        Self {
            route: route.to_string(),
            status: None,
            retry_after_secs: None,
            message: None,
            latency_ms: None,
            drop: false,
            after: false,
            times: None,
            percent: None,
        }
    }

    /// Forces `status` on `route`.
    pub fn status(route: &str, status: u16) -> Self {
        Self {
            status: Some(status),
            ..Self::new(route)
        }
    }

    /// Delays `route` by `latency`.
    pub fn latency(route: &str, latency: Duration) -> Self {
        Self {
            latency_ms: Some(latency.as_millis().try_into().unwrap_or(u64::MAX)),
            ..Self::new(route)
        }
    }

    /// Closes the connection on `route` without answering.
    pub fn drop_connection(route: &str) -> Self {
        Self {
            drop: true,
            ..Self::new(route)
        }
    }

    /// Lets the call take effect first and spoils only its answer.
    pub fn after(mut self) -> Self {
        self.after = true;
        self
    }

    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    pub fn percent(mut self, p: u8) -> Self {
        self.percent = Some(p);
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency_ms = Some(latency.as_millis().try_into().unwrap_or(u64::MAX));
        self
    }

    pub fn message(mut self, text: &str) -> Self {
        self.message = Some(text.to_string());
        self
    }

    pub fn validate(&self) -> Result<(), SimError> {
        if self.route != "*" && !ROUTES.contains(&self.route.as_str()) {
            return Err(SimError::Invalid(format!(
                "unknown route {:?}; one of {ROUTES:?} or \"*\"",
                self.route
            )));
        }
        if let Some(status) = self.status {
            if !(400..=599).contains(&status) {
                return Err(SimError::Invalid(format!(
                    "status must be 400..=599, got {status}"
                )));
            }
        }
        if self.status.is_some() && self.drop {
            return Err(SimError::Invalid(
                "status and drop exclude each other".into(),
            ));
        }
        if self.status.is_none() && !self.drop && self.latency_ms.is_none() {
            return Err(SimError::Invalid(
                "a fault needs status, drop or latencyMs".into(),
            ));
        }
        if self.percent.is_some_and(|p| p > 100) {
            return Err(SimError::Invalid("percent must be 0..=100".into()));
        }
        Ok(())
    }
}

/// A fault as listed by `GET /sim/faults`, with its id and remaining count.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultView {
    pub id: u64,
    #[serde(flatten)]
    pub fault: Fault,
    /// Calls it has been applied to so far.
    pub applied: u64,
}

/// What the gateway must do for one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub latency: Option<Duration>,
    pub outcome: Outcome,
    /// Carry the call out first, then wait the latency and apply the outcome to its answer.
    pub after: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Handle the call normally (after the latency, or before it with `after`).
    Proceed,
    Status {
        status: u16,
        retry_after_secs: Option<u64>,
        message: Option<String>,
    },
    Drop,
}

#[derive(Debug, Default)]
pub struct FaultSet {
    rules: Vec<FaultView>,
    next_id: u64,
}

impl FaultSet {
    pub fn add(&mut self, fault: Fault) -> Result<u64, SimError> {
        fault.validate()?;
        self.next_id += 1;
        self.rules.push(FaultView {
            id: self.next_id,
            fault,
            applied: 0,
        });
        Ok(self.next_id)
    }

    pub fn remove(&mut self, id: u64) -> bool {
        let before = self.rules.len();
        self.rules.retain(|r| r.id != id);
        self.rules.len() != before
    }

    /// Removes the faults of one route (`None`: all of them).
    pub fn clear(&mut self, route: Option<&str>) {
        match route {
            Some(route) => self.rules.retain(|r| r.fault.route != route),
            None => self.rules.clear(),
        }
    }

    pub fn list(&self) -> Vec<FaultView> {
        self.rules.clone()
    }

    /// The first rule for `route` that fires on this call (oldest first), counted down.
    /// `roll` is a uniform number in 0..100 for the percentage check.
    pub fn pick(&mut self, route: &str, roll: u8) -> Option<Applied> {
        let position = self.rules.iter().position(|r| {
            (r.fault.route == route || r.fault.route == "*")
                && r.fault.times != Some(0)
                && r.fault.percent.is_none_or(|p| roll < p)
        })?;
        let rule = &mut self.rules[position];
        rule.applied += 1;
        let fault = rule.fault.clone();
        if let Some(left) = rule.fault.times.as_mut() {
            *left -= 1;
            if *left == 0 {
                self.rules.remove(position);
            }
        }
        let outcome = if fault.drop {
            Outcome::Drop
        } else if let Some(status) = fault.status {
            Outcome::Status {
                status,
                retry_after_secs: fault.retry_after_secs,
                message: fault.message,
            }
        } else {
            Outcome::Proceed
        };
        Some(Applied {
            latency: fault.latency_ms.map(Duration::from_millis),
            outcome,
            after: fault.after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_n_calls_then_gone() {
        let mut set = FaultSet::default();
        set.add(Fault::status("respond", 503).times(2)).unwrap();
        assert!(set.pick("control", 0).is_none());
        assert!(set.pick("respond", 0).is_some());
        assert!(set.pick("respond", 0).is_some());
        assert!(set.pick("respond", 0).is_none());
        assert!(set.list().is_empty());
    }

    #[test]
    fn percent_uses_the_roll() {
        let mut set = FaultSet::default();
        set.add(Fault::drop_connection("*").percent(30)).unwrap();
        assert_eq!(set.pick("tag", 29).unwrap().outcome, Outcome::Drop);
        assert!(set.pick("tag", 30).is_none());
    }

    #[test]
    fn after_is_carried_to_the_gateway() {
        let mut set = FaultSet::default();
        let fault: Fault =
            serde_json::from_str(r#"{"route":"respond","status":503,"after":true,"times":1}"#)
                .unwrap();
        assert_eq!(fault, Fault::status("respond", 503).after().times(1));
        set.add(fault).unwrap();
        let applied = set.pick("respond", 0).unwrap();
        assert!(applied.after);
        assert!(matches!(
            applied.outcome,
            Outcome::Status { status: 503, .. }
        ));
        assert!(set.add(Fault::latency("tag", Duration::ZERO)).is_ok());
        assert!(!set.pick("tag", 0).unwrap().after);
    }

    #[test]
    fn invalid_faults_are_refused() {
        let mut set = FaultSet::default();
        assert!(set.add(Fault::status("nope", 500)).is_err());
        assert!(set.add(Fault::status("respond", 200)).is_err());
        assert!(set.add(Fault::new("respond")).is_err());
        assert!(set.add(Fault::status("respond", 500).percent(101)).is_err());
    }
}
