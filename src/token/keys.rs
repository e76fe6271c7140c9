//! The gateway's token keys: at most two, so a key can be rotated without refusing tokens in
//! flight (add the new key first, so it mints; drop the old one once its tokens have expired).
//! Each comes from a file or an environment variable holding 32 random bytes, as 64 hex
//! digits or base64, and never from the command line, where `ps` would show it.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use zeroize::Zeroizing;

/// Keys a gateway verifies with at once.
pub const MAX_KEYS: usize = 2;

/// Standard base64, with or without padding (`openssl rand -base64 32` pads).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One key and its id (the envelope's second byte).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey {
    pub id: u8,
    pub bytes: Zeroizing<[u8; 32]>,
}

/// The key material never reaches a log line.
impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenKey {{ id: {}, bytes: <redacted> }}", self.id)
    }
}

/// The configured keys; the first mints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRing {
    pub keys: Vec<TokenKey>,
}

impl KeyRing {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key new tokens are sealed with.
    pub fn minting(&self) -> Option<&TokenKey> {
        self.keys.first()
    }

    /// Parses `ID=file:PATH` and `ID=env:VAR` entries, comma-separated, reading each source.
    pub fn parse(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        read_file: &dyn Fn(&Path) -> std::io::Result<String>,
    ) -> Result<KeyRing, String> {
        let mut keys: Vec<TokenKey> = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, source) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not ID=file:PATH or ID=env:VAR"))?;
            let id: u8 = id
                .trim()
                .parse()
                .map_err(|_| format!("key id {id:?} is not a number from 0 to 255"))?;
            if keys.iter().any(|k| k.id == id) {
                return Err(format!("key id {id} is given twice"));
            }
            let material = match source.trim().split_once(':') {
                Some(("file", path)) => Zeroizing::new(
                    read_file(Path::new(path))
                        .map_err(|e| format!("key {id}: cannot read {path}: {e}"))?,
                ),
                Some(("env", var)) => {
                    Zeroizing::new(env(var).ok_or_else(|| format!("key {id}: {var} is not set"))?)
                }
                _ => {
                    return Err(format!(
                        "key {id}: {source:?} is neither file:PATH nor env:VAR"
                    ))
                }
            };
            let bytes = parse_material(&material).map_err(|why| format!("key {id}: {why}"))?;
            keys.push(TokenKey { id, bytes });
        }
        if keys.len() > MAX_KEYS {
            return Err(format!(
                "{} keys given; at most {MAX_KEYS} (the current one and the one being retired)",
                keys.len()
            ));
        }
        Ok(KeyRing { keys })
    }
}

/// 32 bytes from 64 hex digits or base64; surrounding whitespace (a file's newline) ignored.
pub fn parse_material(text: &str) -> Result<Zeroizing<[u8; 32]>, String> {
    let text = text.trim();
    let mut out = Zeroizing::new([0u8; 32]);
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let digit = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
            *slot = digit(pair[0]) << 4 | digit(pair[1]);
        }
        return Ok(out);
    }
    let decoded = Zeroizing::new(BASE64.decode(text).map_err(|_| {
        "the key is neither 64 hex digits nor base64 (make one with `openssl rand -hex 32`)"
            .to_owned()
    })?);
    if decoded.len() != 32 {
        return Err(format!(
            "the key is {} bytes; it must be 32 random bytes",
            decoded.len()
        ));
    }
    out.copy_from_slice(&decoded);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn env(k: &str) -> Option<String> {
        match k {
            "K1" => Some(HEX.to_owned()),
            // The same bytes in base64, as `openssl rand -base64 32` prints them.
            "K2" => Some("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n".to_owned()),
            "SHORT" => Some("AAEC".to_owned()),
            _ => None,
        }
    }

    fn no_files(p: &Path) -> std::io::Result<String> {
        if p == Path::new("/keys/k3") {
            Ok(format!("{}\n", HEX.to_uppercase()))
        } else {
            Err(std::io::ErrorKind::NotFound.into())
        }
    }

    fn parse(t: &str) -> Result<KeyRing, String> {
        KeyRing::parse(t, &env, &no_files)
    }

    #[test]
    fn hex_base64_env_and_file() {
        let ring = parse("2=env:K2, 1=env:K1").unwrap();
        assert_eq!(ring.keys.len(), 2);
        assert_eq!(ring.minting().unwrap().id, 2);
        assert_eq!(ring.keys[0].bytes, ring.keys[1].bytes);
        assert_eq!(ring.keys[1].bytes[31], 0x1f);
        let ring = parse("3=file:/keys/k3").unwrap();
        assert_eq!(ring.keys[0].bytes[10], 0x0a);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn mistakes_are_explained() {
        assert!(parse("1=env:NOPE").unwrap_err().contains("NOPE is not set"));
        assert!(parse("1=env:SHORT").unwrap_err().contains("is 3 bytes"));
        assert!(parse("1=file:/nowhere")
            .unwrap_err()
            .contains("cannot read /nowhere"));
        assert!(parse("256=env:K1").unwrap_err().contains("0 to 255"));
        assert!(parse("1=env:K1,1=env:K2").unwrap_err().contains("twice"));
        assert!(parse("1=env:K1,2=env:K2,3=file:/keys/k3")
            .unwrap_err()
            .contains("at most 2"));
        assert!(parse("1=K1").unwrap_err().contains("neither file:PATH"));
        assert!(parse("env:K1").unwrap_err().contains("ID=file:PATH"));
    }

    #[test]
    fn debug_hides_the_key() {
        let ring = parse("1=env:K1").unwrap();
        let text = format!("{ring:?}");
        assert!(text.contains("redacted") && !text.contains("31"), "{text}");
    }
}
