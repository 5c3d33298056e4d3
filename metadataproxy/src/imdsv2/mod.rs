//! IMDSv2 session tokens, minted by the agent.
//!
//! A token is stateless: AES-256-GCM over its expiry and the identity of the caller it was
//! minted for. The agent answers `PUT /latest/api/token` itself; a token is valid only from the
//! caller it was minted for, until it expires.
//!
//! The key is kept in `TOKEN_KEY_FILE` ([`keyfile`]), so tokens survive restarts and upgrades
//! of the agent as they survive everything but a reboot on EC2: SDKs hold a token for up to
//! six hours and few of them recover from a 401. It is replaced every `TOKEN_KEY_ROTATION`;
//! the key before stays valid for the tokens it sealed until the last of them expires
//! ([`MAX_TTL`] after the rotation), so a rotation costs no client a 401 either.
//!
//! Wire form: base64url (no padding) of `nonce (12) || ciphertext || tag (16)`; the plaintext
//! is `version (1) || expiry (u64, Unix milliseconds, big-endian) || binding (UTF-8)`.

pub mod keyfile;
mod settings;

pub use settings::{default_token_key_file, TokenKeyConfig, DEFAULT_TOKEN_KEY_FILE};

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use keyfile::KeyFileError;
use keyfile::{KeyBytes, Stored};

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

/// One key tokens are sealed with; never printed.
pub struct TokenKey {
    key: LessSafeKey,
    raw: KeyBytes,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(***)")
    }
}

impl TokenKey {
    /// A fresh random key.
    pub fn generate() -> TokenKey {
        TokenKey::from_bytes(KeyBytes(rand::random()))
    }

    /// The key with these bytes.
    pub fn from_bytes(raw: KeyBytes) -> TokenKey {
        TokenKey {
            key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &raw.0).expect("32-byte key")),
            raw,
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

/// The keys the agent seals and opens tokens with: the current one, and after a rotation the
/// one before, which opens the tokens it sealed until they have all expired.
pub struct TokenKeys {
    ring: RwLock<Ring>,
    /// Where the keys are kept (`None`: `TOKEN_KEY_FILE=none`, in memory only).
    file: Option<PathBuf>,
    /// `TOKEN_KEY_ROTATION` (`None`: never).
    rotation: Option<Duration>,
}

struct Ring {
    current: TokenKey,
    created: SystemTime,
    previous: Option<(TokenKey, SystemTime)>,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys")
            .field("file", &self.file)
            .field("rotation", &self.rotation)
            .finish_non_exhaustive()
    }
}

/// How [`TokenKeys::open_file`] found the key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFileState {
    /// There was none: a new key was made and written.
    Created,
    /// Its key was read (and rotated at once if it was due).
    Loaded {
        /// When the current key was made.
        created: SystemTime,
        /// The previous key is still valid for tokens it sealed.
        previous: bool,
    },
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Ring {
    fn fresh(now: SystemTime) -> Ring {
        Ring {
            current: TokenKey::generate(),
            created: now,
            previous: None,
        }
    }

    fn from_stored(s: &Stored, now: SystemTime) -> Ring {
        Ring {
            current: TokenKey::from_bytes(s.current.clone()),
            created: UNIX_EPOCH + Duration::from_secs(s.created),
            previous: s
                .previous
                .as_ref()
                .map(|(k, until)| (k, UNIX_EPOCH + Duration::from_secs(*until)))
                .filter(|(_, until)| *until > now)
                .map(|(k, until)| (TokenKey::from_bytes(k.clone()), until)),
        }
    }

    fn stored(&self) -> Stored {
        Stored {
            current: self.current.raw.clone(),
            created: unix_secs(self.created),
            previous: self
                .previous
                .as_ref()
                .map(|(k, until)| (k.raw.clone(), unix_secs(*until))),
        }
    }

    /// The ring after replacing the current key at `now`: every token the current key sealed
    /// expires within [`MAX_TTL`].
    fn rotated(&self, now: SystemTime) -> Ring {
        Ring {
            current: TokenKey::generate(),
            created: now,
            previous: Some((
                TokenKey::from_bytes(self.current.raw.clone()),
                now + Duration::from_secs(MAX_TTL),
            )),
        }
    }

    fn due(&self, rotation: Option<Duration>, now: SystemTime) -> bool {
        rotation.is_some_and(|r| now >= self.created + r)
    }
}

impl TokenKeys {
    /// Keys in memory only: tokens die with the agent (`TOKEN_KEY_FILE=none`, and tests).
    pub fn ephemeral(rotation: Option<Duration>) -> TokenKeys {
        TokenKeys {
            ring: RwLock::new(Ring::fresh(SystemTime::now())),
            file: None,
            rotation,
        }
    }

    /// The keys kept in the file at `path`: read, or made and written when there is none
    /// (creating its directory, mode 0700, when only that is missing); rotated at once if the
    /// current key is older than `rotation`. The error says what is wrong with the file and
    /// never falls back to a fresh key.
    pub fn open_file(
        path: &Path,
        rotation: Option<Duration>,
        now: SystemTime,
    ) -> Result<(TokenKeys, KeyFileState), KeyFileError> {
        let (ring, state) = match keyfile::read(path)? {
            Some(stored) => Self::loaded(&stored, now),
            None => {
                let ring = Ring::fresh(now);
                if keyfile::create(path, &ring.stored())? {
                    (ring, KeyFileState::Created)
                } else {
                    // Another agent made it first: use its key.
                    let stored = keyfile::read(path)?.ok_or(KeyFileError::Vanished)?;
                    Self::loaded(&stored, now)
                }
            }
        };
        let keys = TokenKeys {
            ring: RwLock::new(ring),
            file: Some(path.to_path_buf()),
            rotation,
        };
        keys.rotate_if_due(now)?;
        Ok((keys, state))
    }

    fn loaded(stored: &Stored, now: SystemTime) -> (Ring, KeyFileState) {
        let ring = Ring::from_stored(stored, now);
        let state = KeyFileState::Loaded {
            created: ring.created,
            previous: ring.previous.is_some(),
        };
        (ring, state)
    }

    /// Where the keys are kept, if anywhere.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    fn ring(&self) -> std::sync::RwLockReadGuard<'_, Ring> {
        // A panic while holding the lock cannot leave a half-made ring: it is replaced whole.
        self.ring.read().unwrap_or_else(|e| e.into_inner())
    }

    /// A token for `binding`, valid for `ttl` from `now`, sealed with the current key.
    pub fn mint(&self, binding: &Binding, ttl: Duration, now: SystemTime) -> String {
        self.ring().current.mint(binding, ttl, now)
    }

    /// Opens `token` with the current key, or with the previous one while its tokens can
    /// still be valid at `now`.
    pub fn open(&self, token: &str, now: SystemTime) -> Result<(Binding, SystemTime), TokenError> {
        let ring = self.ring();
        match ring.current.open(token) {
            Err(TokenError::Invalid) => match &ring.previous {
                Some((key, until)) if now < *until => key.open(token),
                _ => Err(TokenError::Invalid),
            },
            opened => opened,
        }
    }

    /// Checks that `token` is valid at `now` for `caller`.
    pub fn verify(&self, token: &str, caller: &Binding, now: SystemTime) -> Result<(), TokenError> {
        let (binding, expiry) = self.open(token, now)?;
        if now >= expiry {
            return Err(TokenError::Expired);
        }
        if &binding != caller {
            return Err(TokenError::WrongCaller);
        }
        Ok(())
    }

    /// Replaces the current key if it is older than `TOKEN_KEY_ROTATION`, writing the file
    /// first: `Ok(true)` when it did. When the file cannot be written the keys stay as they
    /// are (a rotation that would not survive a restart would cost every held token a 401).
    pub fn rotate_if_due(&self, now: SystemTime) -> Result<bool, KeyFileError> {
        if !self.ring().due(self.rotation, now) {
            return Ok(false);
        }
        let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
        if !ring.due(self.rotation, now) {
            return Ok(false);
        }
        let next = ring.rotated(now);
        if let Some(path) = &self.file {
            keyfile::replace(path, &next.stored())?;
        }
        *ring = next;
        Ok(true)
    }
}

/// How often the agent checks whether its key is due for rotation.
pub const ROTATION_CHECK: Duration = Duration::from_secs(60);

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

    fn scratch_file(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "mp-tokenkeys-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        (dir.clone(), dir.join("token.key"))
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_rotation_keeps_held_tokens_valid_until_they_expire() {
        let keys = TokenKeys::ephemeral(Some(DAY));
        // `ephemeral` dates its key from the real clock; test from there.
        let start = SystemTime::now();
        let a = Binding::Container("aaaa".into());
        let held = keys.mint(&a, Duration::from_secs(MAX_TTL), start);
        assert_eq!(keys.rotate_if_due(start + DAY / 2).ok(), Some(false));
        let at = start + DAY + Duration::from_secs(5);
        assert_eq!(keys.rotate_if_due(at).ok(), Some(true));
        assert_eq!(keys.rotate_if_due(at).ok(), Some(false), "once per period");
        let fresh = keys.mint(&a, Duration::from_secs(60), at);
        assert_eq!(keys.verify(&fresh, &a, at), Ok(()));
        // The held token was sealed with the previous key: still opened until the previous
        // key's tokens have all expired, refused as expired or invalid after.
        let (bound, _) = keys.open(&held, at).expect("previous key opens its tokens");
        assert_eq!(bound, a);
        let last = at + Duration::from_secs(MAX_TTL);
        assert_eq!(keys.open(&held, last).unwrap_err(), TokenError::Invalid);
        let pre = keys.mint(&a, Duration::from_secs(MAX_TTL), at);
        assert_eq!(keys.rotate_if_due(at + DAY).ok(), Some(true));
        assert_eq!(
            keys.verify(&pre, &a, at + DAY + Duration::from_secs(MAX_TTL - 1)),
            Err(TokenError::Expired),
            "opened by the previous key, then refused for its own expiry"
        );
    }

    #[test]
    fn tokens_survive_a_restart_with_the_key_file() {
        let (dir, path) = scratch_file("restart");
        let now = SystemTime::now();
        let (first, state) = TokenKeys::open_file(&path, Some(DAY), now).unwrap();
        assert_eq!(state, KeyFileState::Created);
        let a = Binding::Ip("172.17.0.9".parse().unwrap());
        let held = first.mint(&a, Duration::from_secs(MAX_TTL), now);
        drop(first);
        let (second, state) = TokenKeys::open_file(&path, Some(DAY), now).unwrap();
        assert!(matches!(
            state,
            KeyFileState::Loaded {
                previous: false,
                ..
            }
        ));
        assert_eq!(second.verify(&held, &a, now), Ok(()));

        // A restart after the rotation period rotates at once and keeps the held token.
        let later = now + DAY + Duration::from_secs(1);
        let (third, _) = TokenKeys::open_file(&path, Some(DAY), later).unwrap();
        let (fourth, state) = TokenKeys::open_file(&path, Some(DAY), later).unwrap();
        assert!(matches!(state, KeyFileState::Loaded { previous: true, .. }));
        for keys in [&third, &fourth] {
            let (bound, _) = keys.open(&held, later).unwrap();
            assert_eq!(bound, a);
        }
        let fresh = third.mint(&a, Duration::from_secs(60), later);
        assert_eq!(
            fourth.verify(&fresh, &a, later),
            Ok(()),
            "the rotation was written"
        );

        // Without the file, nothing opens: deleting it is how every token is revoked.
        std::fs::remove_file(&path).unwrap();
        let (fifth, state) = TokenKeys::open_file(&path, Some(DAY), later).unwrap();
        assert_eq!(state, KeyFileState::Created);
        assert_eq!(fifth.open(&fresh, later).unwrap_err(), TokenError::Invalid);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_key_file_is_an_error_not_a_fresh_key() {
        let (dir, path) = scratch_file("bad");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, "metadataproxy-token-key v1\ncurrent 1 AAAA\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = TokenKeys::open_file(&path, None, SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("wrong size"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "metadataproxy-token-key v1\ncurrent 1 AAAA\n",
            "left as it was"
        );
        std::fs::remove_dir_all(dir).unwrap();
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
