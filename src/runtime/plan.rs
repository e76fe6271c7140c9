//! What `serve` will do on this host with these settings, computed without starting anything
//! (`check-config` prints it).

use crate::config::Settings;
use crate::host::{cgroup, cpus};
use crate::sizing::{self, Human, Sizing};

use super::RuntimeError;

/// Budget used when neither the settings nor a cgroup limit give one.
pub const DEFAULT_BUDGET: u64 = 1 << 30;

/// Share of a cgroup `memory.max` the gateway budgets for itself; the rest is headroom for the
/// page cache, allocator slack and what a ceiling-based estimate can miss.
pub const CGROUP_SHARE_PERCENT: u64 = 90;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetSource {
    Configured,
    Cgroup { memory_max: u64 },
    Default,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub cpus: Vec<usize>,
    pub allowed_cpus: Vec<usize>,
    pub budget_source: BudgetSource,
    pub sizing: Sizing,
}

pub fn plan(settings: &Settings) -> Result<Plan, RuntimeError> {
    let allowed = cpus::allowed()?;
    let cpus = cpus::select(&allowed, settings.cores)?;
    let (budget, budget_source) = match (settings.memory_budget, cgroup::memory_limit()) {
        (Some(b), _) => (b, BudgetSource::Configured),
        (None, Some(max)) => (
            max / 100 * CGROUP_SHARE_PERCENT,
            BudgetSource::Cgroup { memory_max: max },
        ),
        (None, None) => (DEFAULT_BUDGET, BudgetSource::Default),
    };
    let sizing = sizing::compute(&sizing::Inputs {
        budget,
        cores: cpus.len(),
        max_sessions: settings.max_sessions,
        pools: settings.pools,
        sockets: settings.sockets,
        max_pending_http: settings.max_pending_http,
        ws_max_message: settings.ws_max_message,
        audio: settings.audio.enabled,
        large_frames: settings.large_frames() as u64,
        tokens: settings.tokens.replay_bytes(),
        client_limits: settings.client_limits(),
    })?;
    Ok(Plan {
        cpus,
        allowed_cpus: allowed,
        budget_source,
        sizing,
    })
}

impl Plan {
    /// Human summary for `check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let s = &self.sizing;
        let source = match self.budget_source {
            BudgetSource::Configured => "configured".to_owned(),
            BudgetSource::Cgroup { memory_max } => format!(
                "{CGROUP_SHARE_PERCENT}% of cgroup memory.max {}",
                Human(memory_max)
            ),
            BudgetSource::Default => "default, no cgroup limit found".to_owned(),
        };
        format!(
            "executors: {} on CPUs {} (allowed: {})\n\
             memory budget: {} ({source})\n\
             base: {} = process {} + executors {} + pending HTTP {} + large frames {} + tokens {} + client addresses {}\n\
             per session: {} = pools {} + kernel socket buffers {} + WebSocket {} + state {} + RDP {} + audio {}\n\
             max sessions: {}{} split per core {:?}",
            self.cpus.len(),
            crate::host::cpus::format_list(&self.cpus),
            crate::host::cpus::format_list(&self.allowed_cpus),
            Human(s.budget),
            Human(s.base.total()),
            Human(s.base.process),
            Human(s.base.executors),
            Human(s.base.pending_http),
            Human(s.base.large_frames),
            Human(s.base.tokens),
            Human(s.base.client_limits),
            Human(s.per_session.total()),
            Human(s.per_session.pools),
            Human(s.per_session.kernel_sockets),
            Human(s.per_session.websocket),
            Human(s.per_session.state),
            Human(s.per_session.rdp),
            Human(s.per_session.audio),
            s.max_sessions,
            if s.max_sessions < s.budget_sessions {
                format!(" (lowered by --max-sessions from {})", s.budget_sessions)
            } else {
                String::new()
            },
            s.per_core,
        )
    }

    /// Machine-readable figures for `check-config --json`, scripts and tests.
    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.sizing;
        serde_json::json!({
            "cpus": self.cpus,
            "allowed_cpus": self.allowed_cpus,
            "budget_bytes": s.budget,
            "base_bytes": s.base.total(),
            "per_session_bytes": s.per_session.total(),
            "max_sessions": s.max_sessions,
            "budget_sessions": s.budget_sessions,
            "per_core": s.per_core,
            "base": {
                "process": s.base.process,
                "executors": s.base.executors,
                "pending_http": s.base.pending_http,
                "large_frames": s.base.large_frames,
                "tokens": s.base.tokens,
                "client_limits": s.base.client_limits,
            },
            "per_session": {
                "pools": s.per_session.pools,
                "kernel_sockets": s.per_session.kernel_sockets,
                "websocket": s.per_session.websocket,
                "state": s.per_session.state,
                "rdp": s.per_session.rdp,
                "audio": s.per_session.audio,
            },
        })
    }
}
