//! IMDSv2 session tokens, minted by the agent.
//!
//! A token is stateless: AES-256-GCM over its expiry and the identity of the caller it was
//! minted for, under a key generated at start-up (so tokens do not survive a restart, as they
//! do not survive a reboot of the real service). The agent answers `PUT /latest/api/token`
//! itself; a token is valid only from the caller it was minted for, until it expires.
//!
//! Wire form: base64url (no padding) of `nonce (12) || ciphertext || tag (16)`; the plaintext
//! is `version (1) || expiry (u64, Unix milliseconds, big-endian) || binding (UTF-8)`.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Header carrying a token on requests.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// Header carrying the requested (and granted) lifetime.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// Longest lifetime a token may have, as on EC2.
pub const MAX_TTL: u64 = 21_600;
/// Longest token accepted for decoding (a real one is about 100 characters).
const MAX_TOKEN_LEN: usize = 512;
const VERSION: u8 = 1;
const AAD: &[u8] = b"metadataproxy imdsv2 token v1";

/// Who a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// A container, by full id (its IP may change; its id does not).
    Container(String),
    /// A caller that is not a container, by address.
    Ip(IpAddr),
}

impl Binding {
    fn encode(&self) -> String {
        match self {
            Binding::Container(id) => format!("c:{id}"),
            Binding::Ip(ip) => format!("i:{ip}"),
        }
    }

    fn decode(s: &str) -> Option<Binding> {
        match s.split_at_checked(2)? {
            ("c:", id) if !id.is_empty() => Some(Binding::Container(id.to_string())),
            ("i:", ip) => ip.parse().ok().map(Binding::Ip),
            _ => None,
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token this agent minted (garbage, tampered, or from before a restart).
    #[error("not a token minted by this agent")]
    Invalid,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Minted for another caller.
    #[error("token minted for another caller")]
    WrongCaller,
}

/// The key tokens are sealed with; generated at start-up, never stored or printed.
pub struct TokenKey {
    key: LessSafeKey,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(***)")
    }
}

impl TokenKey {
    /// A fresh random key.
    pub fn generate() -> TokenKey {
        let bytes: [u8; 32] = rand::random();
        TokenKey {
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).expect("32-byte key")),
        }
    }

    /// A token for `binding`, valid for `ttl` from `now`.
    pub fn mint(&self, binding: &Binding, ttl: Duration, now: SystemTime) -> String {
        let expiry = (now + ttl)
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut data = Vec::with_capacity(9 + 80);
        data.push(VERSION);
        data.extend_from_slice(&expiry.to_be_bytes());
        data.extend_from_slice(binding.encode().as_bytes());
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(AAD),
                &mut data,
            )
            .expect("sealing a short buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + data.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&data);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Opens `token`: its binding and expiry, if this agent minted it and nobody changed it.
    pub fn open(&self, token: &str) -> Result<(Binding, SystemTime), TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let mut raw = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| TokenError::Invalid)?;
        if raw.len() < NONCE_LEN + 16 + 9 {
            return Err(TokenError::Invalid);
        }
        let mut sealed = raw.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&raw).map_err(|_| TokenError::Invalid)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(AAD), &mut sealed)
            .map_err(|_| TokenError::Invalid)?;
        if plain.len() < 9 || plain[0] != VERSION {
            return Err(TokenError::Invalid);
        }
        let expiry = u64::from_be_bytes(plain[1..9].try_into().expect("8 bytes"));
        let binding = std::str::from_utf8(&plain[9..])
            .ok()
            .and_then(Binding::decode)
            .ok_or(TokenError::Invalid)?;
        Ok((binding, UNIX_EPOCH + Duration::from_millis(expiry)))
    }

    /// Checks that `token` is valid at `now` for `caller`.
    pub fn verify(&self, token: &str, caller: &Binding, now: SystemTime) -> Result<(), TokenError> {
        let (binding, expiry) = self.open(token)?;
        if now >= expiry {
            return Err(TokenError::Expired);
        }
        if &binding != caller {
            return Err(TokenError::WrongCaller);
        }
        Ok(())
    }
}

/// The lifetime a token PUT asks for: whole seconds in 1..=21600.
pub fn parse_ttl(value: Option<&http::HeaderValue>) -> Option<u64> {
    let v = value?.to_str().ok()?.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 6 {
        return None;
    }
    v.parse().ok().filter(|t| (1..=MAX_TTL).contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn a_token_is_valid_for_its_caller_until_it_expires() {
        let key = TokenKey::generate();
        let a = Binding::Container("aaaa".into());
        let t = key.mint(&a, Duration::from_secs(60), now());
        assert_eq!(key.verify(&t, &a, now()), Ok(()));
        assert_eq!(key.verify(&t, &a, now() + Duration::from_secs(59)), Ok(()));
        assert_eq!(
            key.verify(&t, &a, now() + Duration::from_secs(60)),
            Err(TokenError::Expired)
        );
        assert_eq!(
            key.verify(&t, &Binding::Container("bbbb".into()), now()),
            Err(TokenError::WrongCaller)
        );
        let ip = Binding::Ip("172.17.0.2".parse().unwrap());
        let t2 = key.mint(&ip, Duration::from_secs(60), now());
        assert_eq!(key.verify(&t2, &ip, now()), Ok(()));
        assert_eq!(key.verify(&t2, &a, now()), Err(TokenError::WrongCaller));
    }

    #[test]
    fn tampered_foreign_and_garbage_tokens_are_invalid() {
        let key = TokenKey::generate();
        let a = Binding::Container("aaaa".into());
        let t = key.mint(&a, Duration::from_secs(60), now());
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let tampered = URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(key.verify(&tampered, &a, now()), Err(TokenError::Invalid));
        let other = TokenKey::generate();
        assert_eq!(other.verify(&t, &a, now()), Err(TokenError::Invalid));
        for garbage in ["", "x", "AAAA", &"A".repeat(600), "not base64 !!"] {
            assert_eq!(key.open(garbage).unwrap_err(), TokenError::Invalid);
        }
    }

    #[test]
    fn tokens_differ_each_time() {
        let key = TokenKey::generate();
        let a = Binding::Ip("10.0.0.1".parse().unwrap());
        assert_ne!(
            key.mint(&a, Duration::from_secs(60), now()),
            key.mint(&a, Duration::from_secs(60), now())
        );
    }

    #[test]
    fn ttl_must_be_whole_seconds_in_range() {
        let h = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert_eq!(parse_ttl(Some(&h("21600"))), Some(21600));
        assert_eq!(parse_ttl(Some(&h("1"))), Some(1));
        for bad in [
            "0",
            "21601",
            "-1",
            "1.5",
            "",
            " ",
            "abc",
            "+5",
            "99999999999",
        ] {
            assert_eq!(parse_ttl(Some(&h(bad))), None, "{bad:?}");
        }
        assert_eq!(parse_ttl(None), None);
    }
}
