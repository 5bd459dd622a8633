//! The simulator's own clock (epoch ms): set, advanced or sped up so that minute- and
//! day-scale Khoros behaviour (token grace, expiry, health window, suspension probes) can be
//! tested in milliseconds.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use shared::auth::{Clock, SystemClock};

use super::SimError;

/// Sim time = `base_ms` + real time elapsed since `anchor` × `speed`.
#[derive(Debug)]
pub struct SimClock {
    inner: Mutex<ClockState>,
}

#[derive(Debug, Clone, Copy)]
struct ClockState {
    /// Sim time at `anchor`.
    base_ms: i64,
    /// Real instant at which `base_ms` was true.
    anchor: Instant,
    /// Sim milliseconds per real millisecond; 0 freezes the clock.
    speed: f64,
}

impl ClockState {
    fn now_ms(&self) -> i64 {
        let real = self.anchor.elapsed().as_secs_f64() * 1000.0;
        self.base_ms + (real * self.speed) as i64
    }

    /// Starts a new segment at the current sim time, so speed or base changes apply from now.
    fn rebase(&mut self, base_ms: i64) {
        self.base_ms = base_ms;
        self.anchor = Instant::now();
    }
}

/// What `GET /sim/clock` shows.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClockView {
    pub now_ms: i64,
    pub speed: f64,
}

impl SimClock {
    /// A clock reading `start_ms` now (system time when `None`) and running at `speed`.
    pub fn new(start_ms: Option<i64>, speed: f64) -> Result<Self, SimError> {
        check_speed(speed)?;
        Ok(Self {
            inner: Mutex::new(ClockState {
                base_ms: start_ms.unwrap_or_else(|| SystemClock.now_ms()),
                anchor: Instant::now(),
                speed,
            }),
        })
    }

    pub fn now_ms(&self) -> i64 {
        self.lock().now_ms()
    }

    pub fn set_ms(&self, ms: i64) {
        self.lock().rebase(ms);
    }

    pub fn advance(&self, by: Duration) {
        self.advance_ms(i64::try_from(by.as_millis()).unwrap_or(i64::MAX));
    }

    pub fn advance_ms(&self, by_ms: i64) {
        let mut state = self.lock();
        let now = state.now_ms();
        state.rebase(now.saturating_add(by_ms));
    }

    pub fn speed(&self) -> f64 {
        self.lock().speed
    }

    /// Changes the speed from now on; `0` freezes the clock, `60` makes a real second a minute.
    pub fn set_speed(&self, speed: f64) -> Result<(), SimError> {
        check_speed(speed)?;
        let mut state = self.lock();
        let now = state.now_ms();
        state.rebase(now);
        state.speed = speed;
        Ok(())
    }

    pub fn view(&self) -> ClockView {
        let state = self.lock();
        ClockView {
            now_ms: state.now_ms(),
            speed: state.speed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        // The state is plain data, valid even if a holder panicked.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        SimClock::now_ms(self)
    }
}

fn check_speed(speed: f64) -> Result<(), SimError> {
    if speed.is_finite() && speed >= 0.0 {
        Ok(())
    } else {
        Err(SimError::Invalid(format!(
            "clock speed must be a finite number >= 0, got {speed}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_clock_moves_only_when_told() {
        let clock = SimClock::new(Some(1_000), 0.0).unwrap();
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(Duration::from_secs(600));
        assert_eq!(clock.now_ms(), 601_000);
        clock.set_ms(5);
        assert_eq!(clock.now_ms(), 5);
        assert!(clock.set_speed(-1.0).is_err());
        assert!(clock.set_speed(f64::NAN).is_err());
    }

    #[test]
    fn speed_scales_real_time() {
        let clock = SimClock::new(Some(0), 1000.0).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(clock.now_ms() >= 20_000);
    }
}
