//! IMDSv2 tokens (`imdsv2::TokenKey`) and `imdsv2::parse_ttl`.
//!
//! One key per process (as in the agent). For each input:
//! - the input as a token (lossy UTF-8) is refused as `Invalid` by `open` and `verify`:
//!   nothing but this key's own tokens ever opens;
//! - `parse_ttl` on the input as a header value never panics, returns only 1..=21600, and
//!   accepts exactly optional white space around 1 to 6 ASCII digits in that range;
//! - a token minted for a binding built from the input (`Container(id)` or `Ip`), a TTL and
//!   a time from the input opens to the same binding and the expiry truncated to
//!   milliseconds, verifies for its caller before expiry only, is `WrongCaller` for another
//!   caller, and is `Invalid` once any bit of it is changed. A token longer than the accepted
//!   maximum (very long container ids) or for an empty container id is refused as `Invalid`;
//! - the input as the text of a token key file (`imdsv2::keyfile::parse`) never panics, and
//!   what it accepts renders back to the same text: one spelling per key file, so nothing
//!   else in a file is ever taken for (part of) a key.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use metadataproxy::imdsv2::{keyfile, parse_ttl, Binding, TokenError, TokenKey, MAX_TTL};

static KEY: OnceLock<TokenKey> = OnceLock::new();

/// The agent's limit on token length (`imdsv2::MAX_TOKEN_LEN`, private).
const MAX_TOKEN_LEN: usize = 512;

fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

fn expected_ttl(data: &[u8]) -> Option<u64> {
    // `HeaderValue::to_str`: visible ASCII and tabs only.
    if !data
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return None;
    }
    let s = std::str::from_utf8(data).ok()?.trim();
    if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = s.parse().ok()?;
    (1..=MAX_TTL).contains(&n).then_some(n)
}

fuzz_target!(|data: &[u8]| {
    let key = KEY.get_or_init(TokenKey::generate);
    let now0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);

    // Arbitrary input is never a valid token.
    let as_token = String::from_utf8_lossy(data);
    assert_eq!(
        key.open(&as_token),
        Err(TokenError::Invalid),
        "{as_token:?} opened"
    );
    let caller = Binding::Ip(IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2)));
    assert_eq!(
        key.verify(&as_token, &caller, now0),
        Err(TokenError::Invalid)
    );

    // The token key file.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(stored) = keyfile::parse(text) {
            assert_eq!(keyfile::render(&stored), text, "key file spelling not unique");
        }
    }

    // The TTL header.
    assert_eq!(parse_ttl(None), None);
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let ttl = parse_ttl(Some(&value));
        if let Some(t) = ttl {
            assert!((1..=MAX_TTL).contains(&t), "parse_ttl({data:?}) = {t}");
        }
        assert_eq!(ttl, expected_ttl(data), "parse_ttl({data:?})");
    }

    // Mint and open.
    let mut rest = data;
    let [kind] = take::<1>(&mut rest);
    let ttl_ms = u64::from(u32::from_le_bytes(take::<4>(&mut rest))) % (MAX_TTL * 1000 + 1);
    let ttl = Duration::from_millis(ttl_ms);
    let now_ns = u64::from_le_bytes(take::<8>(&mut rest)) % (4_000_000_000 * 1_000_000_000);
    let now = UNIX_EPOCH + Duration::from_nanos(now_ns);
    let flip = usize::from(u16::from_le_bytes(take::<2>(&mut rest)));
    let binding = match kind % 3 {
        0 => Binding::Ip(IpAddr::V4(Ipv4Addr::from(take::<4>(&mut rest)))),
        1 => Binding::Ip(IpAddr::V6(Ipv6Addr::from(take::<16>(&mut rest)))),
        _ => Binding::Container(String::from_utf8_lossy(rest).into_owned()),
    };
    let token = key.mint(&binding, ttl, now);
    let opened = key.open(&token);
    let empty_id = matches!(&binding, Binding::Container(id) if id.is_empty());
    if token.len() > MAX_TOKEN_LEN || empty_id {
        assert_eq!(opened, Err(TokenError::Invalid), "{binding:?}");
        return;
    }
    let expiry_ms = (now + ttl)
        .duration_since(UNIX_EPOCH)
        .expect("after the epoch")
        .as_millis() as u64;
    let expiry = UNIX_EPOCH + Duration::from_millis(expiry_ms);
    assert_eq!(
        opened,
        Ok((binding.clone(), expiry)),
        "{binding:?} {ttl:?} {now:?}"
    );

    let want_now = if now >= expiry {
        Err(TokenError::Expired)
    } else {
        Ok(())
    };
    assert_eq!(key.verify(&token, &binding, now), want_now);
    assert_eq!(
        key.verify(&token, &binding, expiry),
        Err(TokenError::Expired)
    );
    if let Some(before) = expiry.checked_sub(Duration::from_millis(1)) {
        assert_eq!(key.verify(&token, &binding, before), Ok(()));
    }
    let other = match &binding {
        Binding::Container(id) => Binding::Container(format!("{id}x")),
        Binding::Ip(_) => Binding::Container("c".into()),
    };
    let before_expiry = expiry
        .checked_sub(Duration::from_millis(1))
        .unwrap_or(expiry);
    if before_expiry < expiry {
        assert_eq!(
            key.verify(&token, &other, before_expiry),
            Err(TokenError::WrongCaller)
        );
    }

    // Any changed bit is refused.
    let raw = URL_SAFE_NO_PAD
        .decode(&token)
        .expect("minted tokens are base64url");
    let mut tampered = raw.clone();
    let bit = flip % (raw.len() * 8);
    tampered[bit / 8] ^= 1 << (bit % 8);
    let tampered = URL_SAFE_NO_PAD.encode(&tampered);
    assert_eq!(
        key.open(&tampered),
        Err(TokenError::Invalid),
        "bit {bit} flipped"
    );
    // And so is a token cut short.
    let cut = URL_SAFE_NO_PAD.encode(&raw[..raw.len() - 1 - flip % (raw.len() - 1)]);
    assert_eq!(key.open(&cut), Err(TokenError::Invalid), "token cut");
});
