//! The token's bytes ([docs/security.md](../../docs/security.md) specifies them):
//!
//! ```text
//! offset  size  field
//! 0       1     version = 1
//! 1       1     key id (0–255): which configured key sealed it
//! 2       12    nonce, random for every token
//! 14      n     AES-256-GCM ciphertext of the claims (UTF-8 JSON)
//! 14+n    16    GCM tag
//! ```
//!
//! The first 14 bytes are the associated data, so the version and key id cannot be changed
//! without the tag failing. The text form is the whole envelope in base64url without padding.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroizing;

use super::TokenError;

pub const VERSION: u8 = 1;
/// Version, key id, nonce.
pub const HEADER_LEN: usize = 2 + NONCE_LEN;
pub const TAG_LEN: usize = 16;
/// Longest token text accepted, checked before anything is decoded.
pub const MAX_TOKEN: usize = 4096;

/// An AES-256-GCM key ready for use, with its id.
pub struct SealingKey {
    pub id: u8,
    key: LessSafeKey,
}

impl SealingKey {
    pub fn new(id: u8, bytes: &[u8; 32]) -> Result<SealingKey, TokenError> {
        let unbound = ring::aead::UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| TokenError::Mint("the key is not 32 bytes".to_owned()))?;
        Ok(SealingKey {
            id,
            key: LessSafeKey::new(unbound),
        })
    }
}

/// Seals `claims` (the JSON bytes) into token text.
pub fn seal(
    key: &SealingKey,
    nonce: [u8; NONCE_LEN],
    claims: &[u8],
) -> Result<Zeroizing<String>, TokenError> {
    let mut envelope = Zeroizing::new(Vec::with_capacity(HEADER_LEN + claims.len() + TAG_LEN));
    envelope.push(VERSION);
    envelope.push(key.id);
    envelope.extend_from_slice(&nonce);
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&envelope[..HEADER_LEN]);
    let mut body = Zeroizing::new(claims.to_vec());
    key.key
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header),
            &mut *body,
        )
        .map_err(|_| TokenError::Mint("sealing failed".to_owned()))?;
    envelope.extend_from_slice(&body);
    let text = URL_SAFE_NO_PAD.encode(&*envelope);
    if text.len() > MAX_TOKEN {
        return Err(TokenError::Mint(format!(
            "the token would be {} bytes, above the {MAX_TOKEN} a gateway accepts",
            text.len()
        )));
    }
    Ok(Zeroizing::new(text))
}

/// Opens token text with whichever of `keys` its key id names. Every failure is the same
/// `Invalid`: a page must not learn whether the key, the tag or the encoding was wrong.
pub fn open(text: &str, keys: &[SealingKey]) -> Result<Zeroizing<Vec<u8>>, TokenError> {
    if text.len() > MAX_TOKEN {
        return Err(TokenError::TooLong);
    }
    let mut envelope = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(text.as_bytes())
            .map_err(|_| TokenError::Invalid)?,
    );
    if envelope.len() < HEADER_LEN + TAG_LEN || envelope[0] != VERSION {
        return Err(TokenError::Invalid);
    }
    let key = keys
        .iter()
        .find(|k| k.id == envelope[1])
        .ok_or(TokenError::Invalid)?;
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&envelope[..HEADER_LEN]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&header[2..]);
    let plain = key
        .key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(header),
            &mut envelope[HEADER_LEN..],
        )
        .map_err(|_| TokenError::Invalid)?;
    Ok(Zeroizing::new(plain.to_vec()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(id: u8, fill: u8) -> SealingKey {
        SealingKey::new(id, &[fill; 32]).unwrap()
    }

    #[test]
    fn round_trip_and_layout() {
        let k = key(7, 1);
        let text = seal(&k, [9; 12], b"{\"a\":1}").unwrap();
        let raw = URL_SAFE_NO_PAD.decode(text.as_bytes()).unwrap();
        assert_eq!(raw[0], 1);
        assert_eq!(raw[1], 7);
        assert_eq!(&raw[2..14], &[9; 12]);
        assert_eq!(raw.len(), 14 + 7 + 16);
        assert!(!text.contains('=') && !text.contains('+') && !text.contains('/'));
        assert_eq!(&open(&text, &[k]).unwrap()[..], b"{\"a\":1}");
    }

    #[test]
    fn any_change_is_invalid() {
        let k = key(7, 1);
        let text = seal(&k, [9; 12], b"{\"a\":1}").unwrap();
        let raw = URL_SAFE_NO_PAD.decode(text.as_bytes()).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let bad = URL_SAFE_NO_PAD.encode(&bad);
            assert_eq!(
                open(&bad, &[key(7, 1), key(6, 1)]).unwrap_err(),
                TokenError::Invalid,
                "byte {i}"
            );
        }
        // Same id, other key; and an id no key has.
        assert_eq!(open(&text, &[key(7, 2)]).unwrap_err(), TokenError::Invalid);
        assert_eq!(open(&text, &[key(8, 1)]).unwrap_err(), TokenError::Invalid);
        assert_eq!(
            open("not base64!", &[key(7, 1)]).unwrap_err(),
            TokenError::Invalid
        );
        assert_eq!(open("", &[key(7, 1)]).unwrap_err(), TokenError::Invalid);
        // Padding is not part of the form.
        assert_eq!(
            open(&format!("{}=", &*text), &[key(7, 1)]).unwrap_err(),
            TokenError::Invalid
        );
    }

    #[test]
    fn length_is_checked_before_decoding() {
        let long = "A".repeat(MAX_TOKEN + 1);
        assert_eq!(open(&long, &[key(1, 1)]).unwrap_err(), TokenError::TooLong);
    }

    #[test]
    fn the_second_key_opens_its_own_tokens() {
        let old = key(1, 1);
        let text = seal(&old, [3; 12], b"x").unwrap();
        assert_eq!(&open(&text, &[key(2, 2), key(1, 1)]).unwrap()[..], b"x");
    }
}
