//! A shared health flag with a reason, read by `/healthz`.

use std::sync::{Arc, Mutex};

/// Health of a service: healthy, or not with a short reason. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Health {
    problem: Arc<Mutex<Option<String>>>,
}

impl Health {
    /// A service that is starting: not healthy until [`Health::set_ok`].
    pub fn starting() -> Self {
        let health = Self::default();
        health.set_problem("starting");
        health
    }

    /// Marks the service healthy.
    pub fn set_ok(&self) {
        if let Ok(mut problem) = self.problem.lock() {
            *problem = None;
        }
    }

    /// Marks the service unhealthy with a reason.
    pub fn set_problem(&self, reason: &str) {
        if let Ok(mut problem) = self.problem.lock() {
            *problem = Some(reason.to_string());
        }
    }

    /// `None` when healthy, else the reason.
    pub fn problem(&self) -> Option<String> {
        self.problem.lock().ok().and_then(|problem| problem.clone())
    }
}
