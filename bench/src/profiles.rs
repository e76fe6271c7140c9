//! What each profile runs: which reels the servers send, how many well-behaved pages and
//! how many hostile sessions of which kind, and which phases apply.

use crate::args::Profile;
use crate::browsers::Kind;
use crate::servers::ReelProfile;

/// Server group names (also the prefix of their gateway targets).
pub const MAIN_GROUP: &str = "main";
pub const HOSTILE_GROUP: &str = "hostile";

#[derive(Debug, Clone)]
pub struct Mix {
    /// Well-behaved pages on the main reel.
    pub well: usize,
    pub well_reel: ReelProfile,
    /// Hostile sessions (storm attempts are counted apart: [`Mix::storm`]).
    pub hostile: usize,
    pub hostile_kind: Kind,
    /// The reel the hostile sessions' servers send.
    pub hostile_reel: ReelProfile,
    /// Upgrade attempts at 2× the gateway's capacity during the measured window.
    pub storm: bool,
    /// Set a budget the run reaches (base + per-session × sessions) unless one is given.
    pub tight_budget: bool,
    /// Idle window and connect/disconnect cycles (well-behaved profiles).
    pub idle_and_cycles: bool,
}

impl Mix {
    pub fn new(profile: Profile, sessions: usize, hostile_share: f64) -> Mix {
        let share = hostile_share.clamp(0.0, 1.0);
        let hostile = if profile.hostile() {
            ((sessions as f64 * share).round() as usize).min(sessions)
        } else {
            0
        };
        let (well_reel, hostile_kind, hostile_reel) = match profile {
            Profile::Office => (ReelProfile::Office, Kind::Page, ReelProfile::Office),
            Profile::Video => (ReelProfile::Video, Kind::Page, ReelProfile::Video),
            Profile::SlowBrowser => (ReelProfile::Office, Kind::Slow, ReelProfile::Office),
            Profile::StalledBrowser => (ReelProfile::Office, Kind::Stalled, ReelProfile::Office),
            Profile::MaxFrames => (ReelProfile::Office, Kind::Page, ReelProfile::MaxFrames),
            Profile::Storm => (ReelProfile::Office, Kind::Storm, ReelProfile::Office),
            Profile::DropMidframe => (ReelProfile::Office, Kind::DropMidframe, ReelProfile::Office),
        };
        let storm = profile == Profile::Storm;
        Mix {
            // Storm: the hostile share of the capacity is left for the storm to fight over.
            well: sessions - hostile,
            well_reel,
            hostile: if storm { 0 } else { hostile },
            hostile_kind,
            hostile_reel,
            storm,
            tight_budget: profile.hostile(),
            idle_and_cycles: !profile.hostile(),
        }
    }

    /// Server groups to start: (name, reel, connections at once).
    pub fn groups(&self, cycle_sessions: usize) -> Vec<(&'static str, ReelProfile, usize)> {
        let mut main = self.well.max(cycle_sessions);
        let mut groups = Vec::new();
        if self.hostile > 0 {
            // Droppers reconnect at once; their previous server connection may still be ending.
            let hostile = if self.hostile_kind == Kind::DropMidframe {
                self.hostile * 2
            } else {
                self.hostile
            };
            if self.hostile_reel == self.well_reel {
                main += hostile;
            } else {
                groups.push((HOSTILE_GROUP, self.hostile_reel, hostile));
            }
        }
        groups.insert(0, (MAIN_GROUP, self.well_reel, main));
        groups
    }

    /// The group a hostile session's browser names.
    pub fn hostile_group(&self) -> &'static str {
        if self.hostile_reel == self.well_reel {
            MAIN_GROUP
        } else {
            HOSTILE_GROUP
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_sessions_are_counted() {
        let m = Mix::new(Profile::StalledBrowser, 50, 0.2);
        assert_eq!((m.well, m.hostile), (40, 10));
        let o = Mix::new(Profile::Office, 50, 0.2);
        assert_eq!((o.well, o.hostile), (50, 0));
        let s = Mix::new(Profile::Storm, 50, 0.2);
        assert_eq!((s.well, s.hostile, s.storm), (40, 0, true));
        let mf = Mix::new(Profile::MaxFrames, 10, 0.2);
        assert_eq!(mf.groups(0).len(), 2);
    }
}
