//! Connection tokens: an operator's portal mints a short-lived token naming the target and
//! carrying the credentials, sealed with AES-256-GCM under a key the gateway shares; the page
//! hands it over in its hello and the gateway opens it, checks its times, takes it once and
//! connects. Sans-IO: text, keys and the time in; a target or a refusal out. The format is
//! specified byte by byte in [docs/security.md](../../docs/security.md).

pub mod claims;
pub mod envelope;
pub mod keys;
pub mod replay;

use std::sync::Mutex;
use std::time::Duration;

use ring::rand::SecureRandom;
use zeroize::Zeroizing;

pub use claims::Claims;
pub use envelope::MAX_TOKEN;
pub use keys::{KeyRing, TokenKey};

use envelope::SealingKey;
use replay::ReplayCache;

use crate::rdp::Target;

/// Why a token was refused, in the words the page shows. Everything that could tell a
/// forger how close they came (wrong key, unknown key id, changed bytes, bad encoding) is
/// the one `Invalid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("connection tokens are not enabled on this gateway")]
    Disabled,
    #[error("the connection token is longer than {MAX_TOKEN} bytes")]
    TooLong,
    #[error("the connection token is not valid for this gateway")]
    Invalid,
    /// Only a holder of the key can produce this one, so it may say what is wrong.
    #[error("the connection token is malformed: {0}")]
    Malformed(String),
    #[error("the connection token has expired")]
    Expired,
    #[error(
        "the connection token is not valid yet: it was issued in the future (check the clocks of the portal and the gateway)"
    )]
    NotYetValid,
    #[error("the connection token lives longer than this gateway allows ({max})")]
    LivesTooLong { max: String },
    #[error("the connection token was already used")]
    Replayed,
    #[error("the gateway is holding too many unexpired connection tokens; try again in a minute")]
    ReplayCacheFull,
    #[error("cannot mint a connection token: {0}")]
    Mint(String),
}

/// The `tokens.*` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSettings {
    pub keys: KeyRing,
    /// Longest `exp − iat` accepted.
    pub max_ttl: Duration,
    /// How far the portal's clock may be from the gateway's.
    pub clock_skew: Duration,
    /// Redeemed tokens remembered at once.
    pub replay_cache: usize,
}

impl Default for TokenSettings {
    fn default() -> Self {
        TokenSettings {
            keys: KeyRing::default(),
            max_ttl: Duration::from_secs(300),
            clock_skew: Duration::from_secs(30),
            replay_cache: 65_536,
        }
    }
}

impl TokenSettings {
    /// Heap the replay table takes, for the memory plan; none without keys.
    pub fn replay_bytes(&self) -> u64 {
        if self.keys.is_empty() {
            0
        } else {
            self.replay_cache as u64 * replay::ENTRY_BYTES
        }
    }
}

/// A redeemed token: the target to connect to, and the id for the log.
#[derive(Debug)]
pub struct Redeemed {
    pub id: String,
    pub target: Target,
}

/// Opens and takes tokens. One per process, shared by every core: the replay table must be
/// one table, or a token could be used once per core. Its lock is taken once per session
/// start, never on a session's data path.
pub struct Redeemer {
    keys: Vec<SealingKey>,
    max_ttl: u64,
    skew: u64,
    replay: Mutex<ReplayCache>,
}

impl Redeemer {
    /// `None` without keys: tokens are then refused as `Disabled`.
    pub fn new(settings: &TokenSettings) -> Result<Option<Redeemer>, TokenError> {
        if settings.keys.is_empty() {
            return Ok(None);
        }
        let keys = settings
            .keys
            .keys
            .iter()
            .map(|k| SealingKey::new(k.id, &k.bytes))
            .collect::<Result<_, _>>()?;
        Ok(Some(Redeemer {
            keys,
            max_ttl: settings.max_ttl.as_secs(),
            skew: settings.clock_skew.as_secs(),
            replay: Mutex::new(ReplayCache::new(settings.replay_cache)),
        }))
    }

    /// Opens `text`, checks its times against `now` (seconds since the epoch) and takes it.
    /// Only a token that passed every other check is recorded, so forged or expired tokens
    /// cannot fill the table.
    pub fn redeem(&self, text: &str, now: u64) -> Result<Redeemed, TokenError> {
        let plain = envelope::open(text, &self.keys)?;
        let claims = Claims::from_json(&plain)?;
        drop(plain);
        if claims.expires_at <= claims.issued_at {
            return Err(TokenError::Malformed("exp is not after iat".to_owned()));
        }
        if claims.expires_at - claims.issued_at > self.max_ttl {
            return Err(TokenError::LivesTooLong {
                max: humantime::format_duration(Duration::from_secs(self.max_ttl)).to_string(),
            });
        }
        if claims.issued_at > now.saturating_add(self.skew) {
            return Err(TokenError::NotYetValid);
        }
        let forget_after = claims.expires_at.saturating_add(self.skew);
        if now >= forget_after {
            return Err(TokenError::Expired);
        }
        self.replay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .redeem(ReplayCache::digest(&claims.id), forget_after, now)?;
        Ok(Redeemed {
            id: claims.id.clone(),
            target: claims.target.clone(),
        })
    }
}

/// Mints a token for `target`, valid from `now` for `ttl`, sealed with `key`. The id and
/// the nonce come from `rng`.
pub fn mint(
    key: &TokenKey,
    target: &Target,
    now: u64,
    ttl: Duration,
    rng: &dyn SecureRandom,
) -> Result<Zeroizing<String>, TokenError> {
    let no_random = |_| TokenError::Mint("the system has no randomness to give".to_owned());
    let mut id = [0u8; 16];
    rng.fill(&mut id).map_err(no_random)?;
    let mut nonce = [0u8; 12];
    rng.fill(&mut nonce).map_err(no_random)?;
    let ttl = ttl.as_secs().max(1);
    let claims = Claims {
        id: base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, id),
        issued_at: now,
        expires_at: now.saturating_add(ttl),
        target: target.clone(),
    };
    let json = claims.to_json()?;
    envelope::seal(&SealingKey::new(key.id, &key.bytes)?, nonce, &json)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::rdp::TlsPolicy;
    use ring::rand::SystemRandom;

    fn key(id: u8, fill: u8) -> TokenKey {
        TokenKey {
            id,
            bytes: Zeroizing::new([fill; 32]),
        }
    }

    fn target() -> Target {
        Target {
            host: "rdp.example.com".into(),
            port: 3389,
            username: "bob".into(),
            password: "pw".into(),
            domain: None,
            tls: TlsPolicy::Insecure,
        }
    }

    fn redeemer(keys: Vec<TokenKey>) -> Redeemer {
        Redeemer::new(&TokenSettings {
            keys: KeyRing { keys },
            replay_cache: 8,
            ..TokenSettings::default()
        })
        .unwrap()
        .unwrap()
    }

    fn minted(k: &TokenKey, now: u64, ttl: u64) -> Zeroizing<String> {
        mint(
            k,
            &target(),
            now,
            Duration::from_secs(ttl),
            &SystemRandom::new(),
        )
        .unwrap()
    }

    #[test]
    fn a_token_is_good_once() {
        let r = redeemer(vec![key(1, 1)]);
        let t = minted(&key(1, 1), 1_000, 60);
        let got = r.redeem(&t, 1_010).unwrap();
        assert_eq!(got.target, target());
        assert_eq!(got.id.len(), 22);
        assert_eq!(r.redeem(&t, 1_011).unwrap_err(), TokenError::Replayed);
        // Another token for the same target is another token.
        r.redeem(&minted(&key(1, 1), 1_000, 60), 1_012).unwrap();
    }

    #[test]
    fn times_are_checked_with_the_skew() {
        let r = redeemer(vec![key(1, 1)]);
        // Expired at 1060; the skew of 30 s keeps it until 1090.
        r.redeem(&minted(&key(1, 1), 1_000, 60), 1_089).unwrap();
        assert_eq!(
            r.redeem(&minted(&key(1, 1), 1_000, 60), 1_090).unwrap_err(),
            TokenError::Expired
        );
        // Issued up to 30 s in the gateway's future is fine; more is not.
        r.redeem(&minted(&key(1, 1), 1_030, 60), 1_000).unwrap();
        assert_eq!(
            r.redeem(&minted(&key(1, 1), 1_031, 60), 1_000).unwrap_err(),
            TokenError::NotYetValid
        );
        let e = r
            .redeem(&minted(&key(1, 1), 1_000, 301), 1_000)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the connection token lives longer than this gateway allows (5m)"
        );
    }

    #[test]
    fn rotation_with_two_keys() {
        let r = redeemer(vec![key(2, 2), key(1, 1)]);
        r.redeem(&minted(&key(2, 2), 1_000, 60), 1_000).unwrap();
        r.redeem(&minted(&key(1, 1), 1_000, 60), 1_000).unwrap();
        // A retired key, or the right id with the wrong bytes: the same answer.
        for k in [key(3, 3), key(1, 9)] {
            assert_eq!(
                r.redeem(&minted(&k, 1_000, 60), 1_000)
                    .unwrap_err()
                    .to_string(),
                "the connection token is not valid for this gateway"
            );
        }
    }

    #[test]
    fn refused_tokens_do_not_fill_the_table() {
        let r = redeemer(vec![key(1, 1)]);
        for _ in 0..20 {
            let _ = r.redeem(&minted(&key(1, 1), 1_000, 60), 5_000);
            let _ = r.redeem(&minted(&key(9, 9), 1_000, 60), 1_000);
        }
        assert!(r.replay.lock().unwrap().is_empty());
    }

    #[test]
    fn no_keys_no_redeemer() {
        assert!(Redeemer::new(&TokenSettings::default()).unwrap().is_none());
        assert_eq!(TokenSettings::default().replay_bytes(), 0);
    }
}
