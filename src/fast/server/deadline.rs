//! A connection's one timer for its idle limit and its per-request limit.
//!
//! Both limits are the same length and count from the connection's last
//! sign of progress: a request's head arriving (the request must then
//! complete in time) or a request completing (the next must then begin in
//! time). Arming a fresh `tokio::time::timeout` for each of those costs two
//! timer-wheel registrations per request; here a request costs a clock read,
//! and the one timer is re-armed only when it fires early, at most once
//! per limit.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::{sleep_until, Instant, Sleep};

/// The timer: see the module docs.
#[derive(Debug)]
pub(super) struct Deadline {
    limit: Duration,
    /// The last sign of progress.
    last: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl Deadline {
    /// A timer that expires `limit` after the last progress; starts now.
    pub(super) fn new(limit: Duration) -> Deadline {
        let now = Instant::now();
        Deadline {
            limit,
            last: now,
            sleep: Box::pin(sleep_until(later(now, limit))),
        }
    }

    /// Records progress at `now`: the limit counts from here.
    pub(super) fn touch(&mut self, now: Instant) {
        self.last = now;
    }

    /// `work`'s output, or `None` once `limit` has passed since the last
    /// progress without `work` completing (`work` is then dropped).
    pub(super) async fn within<F: Future>(&mut self, work: F) -> Option<F::Output> {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                biased;
                out = &mut work => return Some(out),
                () = self.sleep.as_mut() => {
                    let due = later(self.last, self.limit);
                    if Instant::now() >= due {
                        return None;
                    }
                    // Progress since the timer was armed: wait out the rest.
                    self.sleep.as_mut().reset(due);
                }
            }
        }
    }
}

/// `limit` after `at`, or a century on for a limit too long to add (an
/// `--idle-timeout` of `u64::MAX` seconds means "never").
fn later(at: Instant, limit: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    at.checked_add(limit)
        .unwrap_or_else(|| at + CENTURY.min(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_a_limit_after_the_last_progress_not_the_first() {
        let mut deadline = Deadline::new(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(8)).await;
        deadline.touch(Instant::now());
        // 8 s + 9 s is past the first due time, but within 10 s of the
        // progress at 8 s.
        let slow = tokio::time::sleep(Duration::from_secs(9));
        assert_eq!(deadline.within(slow).await, Some(()));
        // No progress since 8 s: expires at 18 s, not at 17 + 10 s.
        let started = Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(deadline.within(never).await, None);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_completes_in_time_is_not_cut() {
        let mut deadline = Deadline::new(Duration::from_secs(1));
        for _ in 0..5 {
            let quick = tokio::time::sleep(Duration::from_millis(600));
            assert_eq!(deadline.within(quick).await, Some(()));
            deadline.touch(Instant::now());
        }
    }
}
