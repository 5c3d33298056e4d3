//! `server::router::classify`, `canonical` and `clean_path` on arbitrary UTF-8.
//!
//! Input: `path[?query]`, split at the first `?` as a request target would be.
//!
//! Asserts:
//! - `clean_path` always yields a clean path (leading `/`, no empty, `.` or `..` segment, the
//!   input's trailing slash kept), is idempotent, and leaves clean paths alone;
//! - `classify` picks `BadPath`, `Redirect` and `Favicon` exactly when it should, redirects only
//!   to the cleaned path (query appended) when that is in the canonical form, never to another
//!   host, and a redirect target never redirects again;
//! - a query only ever makes a route `NotCanonical` (or rides along on a redirect or forward);
//! - **forwarded ⇒ canonical and not IAM**: a `Passthrough` target is its own canonical form,
//!   holds only the allow-listed bytes (no `%`, no dot-edged segment), starts with a known
//!   version and tree, and no segment of it folds (case and punctuation dropped) to `iam`,
//!   `identity-credentials` or `security-credentials`; with the default passthrough policy, none
//!   folds to `user-data` either;
//! - the older reading-based invariant still holds: when any percent-decoding (0 to 4 rounds)
//!   of the raw path, with backslashes read as `/`, `;params` and white space dropped and case
//!   folded, contains `meta-data` followed by `iam` or `identity-credentials` (dot segments
//!   literal or resolved), the route is not `Passthrough`;
//! - served credential routes carry a compatible version and the exact segments, and the token
//!   route is taken only for `/{version}/api/token`;
//! - `classify_container` (the container credentials endpoint) calls a target `Standard` only
//!   under `/v2/credentials/`, without a query, with no empty, `.` or `..` segment and only
//!   unreserved bytes; every other origin-form target is `Named` (served only when it is the
//!   container's own URI).

#![no_main]

use libfuzzer_sys::fuzz_target;
use metadataproxy::path::{canonical, clean_path, is_segment_byte};
use metadataproxy::server::router::{
    classify, classify_container, ContainerTarget, Route, CONTAINER_CREDENTIALS_PREFIX,
};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match input.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (input, None),
    };

    check_clean_path(path);
    check_container(path, query);

    let route = classify(path, query);
    let _ = route.handler_name();
    let _ = route.api_version();

    // A query can only make a route not canonical, or ride along.
    if let Some(q) = query {
        match (&route, classify(path, None)) {
            (Route::NotCanonical, _) => {}
            (Route::Redirect(with), Route::Redirect(without)) => {
                assert_eq!(with, &format!("{without}?{q}"), "redirect query for {path:?}");
            }
            (Route::Passthrough(with), Route::Passthrough(without)) => {
                assert_eq!(with.as_str(), without.as_str(), "{input:?}");
                assert!(with.target().starts_with(&format!("{}?", without.target())), "{input:?}");
            }
            (with, without) => assert_eq!(with, &without, "route depends on the query: {input:?}"),
        }
    }

    if !path.starts_with('/') {
        assert_eq!(route, Route::BadPath, "{path:?}");
        return;
    }
    let cleaned = clean_path(path);
    if cleaned != path {
        match &route {
            Route::NotCanonical => {
                assert!(canonical(&cleaned, query).is_none(), "{path:?}: {cleaned:?} is canonical");
            }
            Route::Redirect(location) => {
                assert!(canonical(&cleaned, query).is_some(), "{path:?} redirected out of the form");
                let expected = match query {
                    Some(q) => format!("{cleaned}?{q}"),
                    None => cleaned.clone(),
                };
                assert_eq!(location, &expected, "redirect of {path:?}");
                assert!(
                    !cleaned.starts_with("//") && !cleaned.contains('\\'),
                    "redirect of {path:?} could leave the host: {cleaned:?}"
                );
                // The client follows the redirect: that request must not redirect again, and
                // must obey the same invariants.
                let followed = classify(&cleaned, query);
                assert!(
                    !matches!(followed, Route::Redirect(_)),
                    "redirect loop: {path:?} -> {cleaned:?} -> {followed:?}"
                );
                check_not_forwarded(&cleaned, &followed);
            }
            other => panic!("{path:?} is not clean ({cleaned:?}) but routed {other:?}"),
        }
        return;
    }
    assert!(!matches!(route, Route::Redirect(_)), "{path:?}: {route:?}");
    assert_eq!(
        route == Route::Favicon,
        path == "/favicon.ico",
        "{path:?}: {route:?}"
    );
    assert_ne!(route, Route::BadPath, "{path:?}");

    check_not_forwarded(path, &route);
    check_served(path, query, &route);
});

/// Go's `path.Clean` shape, as `clean_path` promises it.
fn is_clean(p: &str) -> bool {
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let last = segs.len() - 1;
    segs.iter()
        .enumerate()
        .all(|(i, s)| !matches!(*s, "." | "..") && (i == last || !s.is_empty()))
}

fn check_clean_path(p: &str) {
    let c = clean_path(p);
    assert!(is_clean(&c), "clean_path({p:?}) = {c:?} is not clean");
    assert_eq!(clean_path(&c), c, "clean_path not idempotent on {p:?}");
    assert_eq!(is_clean(p), c == p, "clean_path({p:?}) = {c:?}");
    if c != "/" {
        assert_eq!(
            c.ends_with('/'),
            p.ends_with('/'),
            "trailing slash of {p:?}: {c:?}"
        );
    }
    assert!(c.len() <= p.len() + 1, "clean_path({p:?}) = {c:?} grew");
}

/// Percent-decoding as RFC 3986 defines it (`%` and two hex digits; any other `%` stays),
/// written independently of the router's.
fn percent_decode_once(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path as a server may read it after 0 to 4 rounds of percent-decoding, backslashes
/// read as `/` before and after each.
fn decodings(path: &str) -> Vec<String> {
    let mut views = vec![path.replace('\\', "/")];
    for _ in 0..4 {
        let last = views.last().expect("one view");
        let next = percent_decode_once(last).replace('\\', "/");
        if &next == last {
            break;
        }
        views.push(next);
    }
    views
}

fn fold(seg: &str) -> String {
    seg.split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_lowercase()
}

fn has_sensitive_pair(segs: &[String]) -> bool {
    segs.windows(2)
        .any(|w| w[0] == "meta-data" && (w[1] == "iam" || w[1] == "identity-credentials"))
}

/// Whether one decoding of a path names the host's credentials.
fn view_reaches_credentials(view: &str) -> bool {
    let folded: Vec<String> = view
        .split('/')
        .map(fold)
        .filter(|s| !s.is_empty())
        .collect();
    // Read literally (dot segments as names)...
    let literal: Vec<String> = folded.iter().filter(|s| *s != ".").cloned().collect();
    // ...and with dot segments resolved.
    let mut resolved: Vec<String> = Vec::new();
    for s in &folded {
        match s.as_str() {
            "." => {}
            ".." => {
                resolved.pop();
            }
            _ => resolved.push(s.clone()),
        }
    }
    has_sensitive_pair(&literal) || has_sensitive_pair(&resolved)
}

/// Whether any reading of `path` reaches the host's credentials.
fn reaches_credentials(path: &str) -> bool {
    decodings(path).iter().any(|v| view_reaches_credentials(v))
}

/// Letters and digits, lower-cased: how a lax upstream might compare names.
fn skeleton(s: &str) -> String {
    s.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn check_not_forwarded(path: &str, route: &Route) {
    let Route::Passthrough(target) = route else {
        return;
    };
    assert!(
        !reaches_credentials(path),
        "SECURITY: {path:?} reaches meta-data/iam or identity-credentials but is forwarded"
    );
    let t = target.target();
    // The forwarded bytes are their own canonical form...
    let (p, q) = match t.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (t, None),
    };
    assert_eq!(canonical(p, q).as_ref(), Some(target), "{path:?} forwarded as {t:?}");
    // ...made only of allow-listed bytes...
    assert!(
        t.bytes()
            .all(|b| is_segment_byte(b) || b == b'/' || b == b'?' || b == b'&'),
        "{path:?} forwarded as {t:?}"
    );
    let segs: Vec<&str> = target.segments().collect();
    for seg in &segs {
        assert!(!seg.starts_with('.') && !seg.ends_with('.'), "{path:?} forwarded as {t:?}");
        // ...with no segment an upstream could read as a credential path.
        let folded = skeleton(seg);
        assert!(
            !["iam", "identitycredentials", "securitycredentials"].contains(&folded.as_str()),
            "SECURITY: {path:?} forwarded as {t:?}"
        );
    }
    if let [version, tree, ..] = segs.as_slice() {
        assert!(
            *version == "latest"
                || *version == "1.0"
                || (version.len() == 10 && version.as_bytes()[4] == b'-'),
            "{path:?} forwarded as {t:?}"
        );
        assert!(
            ["meta-data", "user-data", "dynamic"].contains(tree),
            "{path:?} forwarded as {t:?}"
        );
    }
    assert!(!reaches_credentials(t), "SECURITY: {path:?} forwarded as {t:?}");
    if metadataproxy::policy::PathPolicy::default().allows(target) {
        assert!(
            segs.iter().all(|s| skeleton(s) != "userdata"),
            "user data: {path:?} forwarded as {t:?}"
        );
    }
}

/// What the served routes promise.
fn check_served(path: &str, query: Option<&str>, route: &Route) {
    let canon = || {
        canonical(path, query).unwrap_or_else(|| panic!("{path:?} served as {route:?} but not canonical"))
    };
    match route {
        Route::RoleName { version }
        | Route::Info { version }
        | Route::Credentials { version, .. } => {
            assert!(version.as_str() >= "2012-01-12", "{path:?}: {route:?}");
            let c = canon();
            let segs: Vec<&str> = c.segments().collect();
            assert!(
                segs.len() >= 3 && segs[0] == version && segs[1] == "meta-data" && segs[2] == "iam",
                "{path:?} served as {route:?}"
            );
            if let Route::Credentials { role, .. } = route {
                assert!(
                    !role.is_empty() && role.bytes().all(is_segment_byte),
                    "{path:?}: role {role:?}"
                );
                assert_eq!(segs.get(4), Some(&role.as_str()), "{path:?}: {route:?}");
                assert_eq!(segs[3], "security-credentials", "{path:?}: {route:?}");
                assert_eq!(segs.len(), 5, "{path:?}: {route:?}");
            }
        }
        Route::Token => {
            let c = canon();
            let segs: Vec<&str> = c.segments().collect();
            assert!(
                segs.len() == 3 && segs[1] == "api" && segs[2] == "token",
                "{path:?} routed to the token handler"
            );
        }
        _ => {}
    }
}

fn check_container(path: &str, query: Option<&str>) {
    match classify_container(path, query) {
        Route::BadPath => assert!(!path.starts_with('/'), "{path:?}"),
        Route::ContainerCredentials(ContainerTarget::Standard) => {
            assert!(query.is_none(), "{path:?}?{query:?}");
            let rest = path
                .strip_prefix(CONTAINER_CREDENTIALS_PREFIX)
                .unwrap_or_else(|| panic!("{path:?}: standard outside the prefix"));
            for seg in rest.split('/') {
                assert!(
                    !seg.is_empty() && seg != "." && seg != "..",
                    "{path:?}: segment {seg:?}"
                );
                assert!(
                    seg.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b)),
                    "{path:?}: segment {seg:?}"
                );
            }
        }
        Route::ContainerCredentials(ContainerTarget::Named) => {
            assert!(path.starts_with('/'), "{path:?}")
        }
        other => panic!("{path:?}: classify_container gave {other:?}"),
    }
}
