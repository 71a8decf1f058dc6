//! Bookkeeping of Redis failures: a counter for metrics, and one log line when Redis goes away
//! and one when it is back (not one per request).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counts operations that could not use Redis and logs the transitions.
#[derive(Debug)]
pub(crate) struct Outage {
    component: &'static str,
    failures: AtomicU64,
    down: AtomicBool,
}

impl Outage {
    pub(crate) const fn new(component: &'static str) -> Self {
        Self {
            component,
            failures: AtomicU64::new(0),
            down: AtomicBool::new(false),
        }
    }

    /// Records a failed Redis operation.
    pub(crate) fn failed(&self, error: &redis::RedisError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(component = self.component, %error, "redis unavailable; degrading");
        }
    }

    /// Records a successful Redis operation (cheap when Redis was up already).
    pub(crate) fn succeeded(&self) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(component = self.component, "redis reachable again");
        }
    }

    /// How many operations failed so far.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }
}
