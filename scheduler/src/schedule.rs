//! When a rotation is due: a pure function of the stored token record, the stored record of
//! the last attempt and "now". Nothing here depends on when the process started, so a
//! restarted scheduler neither rotates at once nor forgets a rotation that is due.

use std::time::Duration;

use shared::token::TokenRecord;

use crate::records::{AttemptStatus, Reason, RotationState};

/// The rules that make a rotation due.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SchedulePolicy {
    /// Rotate when the token is this old (Khoros recommends weekly).
    pub rotate_every: Duration,
    /// Rotate early when the token expires within this margin.
    pub expiry_margin: Duration,
    /// After a failed attempt, wait this long before trying again for the same token
    /// (4xx are never retried at once: the request must be fixed, or the token replaced).
    pub retry_after_failure: Duration,
    /// An attempt claimed longer ago than this belongs to a scheduler that died.
    pub claim_timeout: Duration,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// No token in KV: nothing can be rotated (seed one with `KHOROS_TOKEN`).
    NoToken,
    /// Not due before `due_at_ms`.
    Wait { due_at_ms: i64 },
    /// Rotate now.
    Rotate(Reason),
    /// Another scheduler claimed this token's rotation and may still be at it.
    InProgress { holder: String },
    /// The last attempt for this token failed; try again at `until_ms`.
    BackingOff { until_ms: i64, last: AttemptStatus },
    /// The last attempt already rotated the token read (its record names it as its base): the
    /// token was read from a replica lagging behind that record. Refreshing it again would
    /// mint a second token for one period, so nothing is done until a read is current.
    StaleToken { revision: u64 },
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl SchedulePolicy {
    /// When `token` is due: its age reaching `rotate_every`, or its expiry entering the margin.
    pub fn due_at_ms(&self, token: &TokenRecord) -> i64 {
        let scheduled = token.rotated_at_ms.saturating_add(ms(self.rotate_every));
        if token.expires_at_ms > 0 {
            scheduled.min(token.expires_at_ms.saturating_sub(ms(self.expiry_margin)))
        } else {
            scheduled
        }
    }

    /// Decides for the token at `token_revision`; `force` ignores the schedule and the
    /// failure backoff but never a live claim of another scheduler.
    pub fn decide(
        &self,
        token: Option<(&TokenRecord, u64)>,
        last: Option<&RotationState>,
        now_ms: i64,
        force: bool,
    ) -> Decision {
        let Some((token, revision)) = token else {
            return Decision::NoToken;
        };
        let due_at_ms = self.due_at_ms(token);
        let reason = if force {
            Reason::Forced
        } else if now_ms < due_at_ms {
            return Decision::Wait { due_at_ms };
        } else if token.expires_at_ms > 0
            && now_ms >= token.expires_at_ms.saturating_sub(ms(self.expiry_margin))
        {
            Reason::ExpiringSoon
        } else {
            Reason::Scheduled
        };
        if let Some(last) = last.filter(|l| l.base_revision == revision) {
            match last.status {
                AttemptStatus::Success => return Decision::StaleToken { revision },
                AttemptStatus::InProgress
                    if now_ms < last.started_at_ms.saturating_add(ms(self.claim_timeout)) =>
                {
                    return Decision::InProgress {
                        holder: last.holder.clone(),
                    };
                }
                status if status.is_failure() && !force => {
                    let failed_at = last.finished_at_ms.unwrap_or(last.started_at_ms);
                    let until_ms = failed_at.saturating_add(ms(self.retry_after_failure));
                    if now_ms < until_ms {
                        return Decision::BackingOff {
                            until_ms,
                            last: status,
                        };
                    }
                }
                _ => {}
            }
        }
        Decision::Rotate(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::auth::{Clock, ManualClock};

    const DAY: i64 = 86_400_000;
    const T0: i64 = 1_700_000_000_000;

    fn policy() -> SchedulePolicy {
        SchedulePolicy {
            rotate_every: Duration::from_secs(7 * 86_400),
            expiry_margin: Duration::from_secs(2 * 86_400),
            retry_after_failure: Duration::from_secs(3600),
            claim_timeout: Duration::from_secs(120),
        }
    }

    fn token(rotated_at_ms: i64, expires_at_ms: i64) -> TokenRecord {
        TokenRecord {
            token: "t".into(),
            expires_at_ms,
            rotated_at_ms,
            source: "rotation".into(),
        }
    }

    fn attempt(status: AttemptStatus, base_revision: u64, at: i64) -> RotationState {
        RotationState {
            base_revision,
            holder: "other".into(),
            status,
            reason: Reason::Scheduled,
            started_at_ms: at,
            finished_at_ms: (status != AttemptStatus::InProgress).then_some(at),
            error: None,
            last_success_at_ms: None,
            retries: 0,
        }
    }

    #[test]
    fn rotates_weekly_from_the_stored_rotation_time() {
        let clock = ManualClock::at(T0);
        let t = token(T0, T0 + 90 * DAY);
        assert_eq!(
            policy().decide(Some((&t, 1)), None, clock.now_ms(), false),
            Decision::Wait {
                due_at_ms: T0 + 7 * DAY
            }
        );
        clock.set(T0 + 7 * DAY - 1);
        assert!(matches!(
            policy().decide(Some((&t, 1)), None, clock.now_ms(), false),
            Decision::Wait { .. }
        ));
        clock.set(T0 + 7 * DAY);
        assert_eq!(
            policy().decide(Some((&t, 1)), None, clock.now_ms(), false),
            Decision::Rotate(Reason::Scheduled)
        );
    }

    #[test]
    fn a_restart_keeps_the_schedule() {
        // A token rotated 3 days ago is not due after a restart, one rotated 8 days ago is.
        let now = T0 + 30 * DAY;
        let fresh = token(now - 3 * DAY, now + 87 * DAY);
        let stale = token(now - 8 * DAY, now + 82 * DAY);
        assert!(matches!(
            policy().decide(Some((&fresh, 4)), None, now, false),
            Decision::Wait { due_at_ms } if due_at_ms == now + 4 * DAY
        ));
        assert_eq!(
            policy().decide(Some((&stale, 4)), None, now, false),
            Decision::Rotate(Reason::Scheduled)
        );
    }

    #[test]
    fn rotates_early_when_expiry_is_within_the_margin() {
        let t = token(T0, T0 + 3 * DAY);
        assert_eq!(policy().due_at_ms(&t), T0 + DAY);
        assert_eq!(
            policy().decide(Some((&t, 1)), None, T0 + DAY, false),
            Decision::Rotate(Reason::ExpiringSoon)
        );
        // Unknown expiry (a seed without KHOROS_TOKEN_EXPIRES_AT_MS): only the weekly rule.
        let seed = token(T0, 0);
        assert_eq!(policy().due_at_ms(&seed), T0 + 7 * DAY);
    }

    #[test]
    fn no_token_means_nothing_to_rotate() {
        assert_eq!(policy().decide(None, None, T0, true), Decision::NoToken);
    }

    #[test]
    fn a_live_claim_of_another_scheduler_is_respected_even_when_forced() {
        let t = token(T0, 0);
        let now = T0 + 8 * DAY;
        let claim = attempt(AttemptStatus::InProgress, 5, now - 1000);
        assert_eq!(
            policy().decide(Some((&t, 5)), Some(&claim), now, true),
            Decision::InProgress {
                holder: "other".into()
            }
        );
        // A claim older than the claim timeout belongs to a dead scheduler.
        assert_eq!(
            policy().decide(Some((&t, 5)), Some(&claim), now + 200_000, false),
            Decision::Rotate(Reason::Scheduled)
        );
        // A claim on an older revision says nothing about this token.
        assert_eq!(
            policy().decide(Some((&t, 6)), Some(&claim), now, false),
            Decision::Rotate(Reason::Scheduled)
        );
    }

    /// A record of a successful rotation from this very token means the token was read from
    /// a replica behind that record: refreshing it again (its grace is still running) would
    /// mint a second token in one period, forced or not.
    #[test]
    fn a_token_the_record_says_was_rotated_is_never_rotated_again() {
        let t = token(T0, 0);
        let now = T0 + 8 * DAY;
        let done = attempt(AttemptStatus::Success, 5, now - 1000);
        for force in [false, true] {
            assert_eq!(
                policy().decide(Some((&t, 5)), Some(&done), now, force),
                Decision::StaleToken { revision: 5 }
            );
        }
        // The token that rotation wrote is judged by the schedule as usual.
        assert_eq!(
            policy().decide(Some((&t, 6)), Some(&done), now, false),
            Decision::Rotate(Reason::Scheduled)
        );
    }

    #[test]
    fn a_failure_backs_off_unless_forced() {
        let t = token(T0, 0);
        let now = T0 + 8 * DAY;
        for status in [
            AttemptStatus::ClientError,
            AttemptStatus::ServerError,
            AttemptStatus::TransportError,
        ] {
            let failed = attempt(status, 2, now - 1000);
            assert_eq!(
                policy().decide(Some((&t, 2)), Some(&failed), now, false),
                Decision::BackingOff {
                    until_ms: now - 1000 + 3_600_000,
                    last: status
                }
            );
            assert_eq!(
                policy().decide(Some((&t, 2)), Some(&failed), now + 3_600_000, false),
                Decision::Rotate(Reason::Scheduled)
            );
            assert_eq!(
                policy().decide(Some((&t, 2)), Some(&failed), now, true),
                Decision::Rotate(Reason::Forced)
            );
        }
    }
}
