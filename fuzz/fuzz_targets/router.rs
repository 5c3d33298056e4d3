//! `server::router::classify` and `clean_path` on arbitrary UTF-8.
//!
//! Input: `path[?query]`, split at the first `?` as a request target would be.
//!
//! Asserts:
//! - `clean_path` always yields a clean path (leading `/`, no empty, `.` or `..` segment, the
//!   input's trailing slash kept), is idempotent, and leaves clean paths alone;
//! - `classify` picks `BadPath`, `Redirect` and `Favicon` exactly when it should, redirects to
//!   the cleaned path with the query appended and never to another host (`//`, `\`), and a
//!   redirect target never redirects again;
//! - the route does not depend on the query (except for the redirect target);
//! - served credential routes carry a compatible version and a plain role segment, and the
//!   token route is taken only for paths ending in `api/token`;
//! - the security invariant: when any percent-decoding (0 to 4 rounds, as the router
//!   bounds it) of the path, with backslashes read as `/`, `;params` and surrounding white
//!   space dropped and case folded, contains the segments `meta-data` followed by `iam` or
//!   `identity-credentials` (with or without dot-segment resolution), the route is not
//!   `Passthrough`, so the request is never forwarded upstream. Checked for the path and
//!   for a redirect's target. For paths the agent really forwards (`Passthrough` and allowed
//!   by the default `policy::PathPolicy`), the same must hold when control characters and
//!   zero-width/format characters are dropped (an upstream that truncates at NUL or ignores
//!   them).

#![no_main]

use libfuzzer_sys::fuzz_target;
use metadataproxy::server::router::{classify, clean_path, Route};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match input.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (input, None),
    };

    check_clean_path(path);

    let route = classify(path, query);
    let _ = route.handler_name();
    let _ = route.api_version();

    // Query independence, and the redirect target carrying the query.
    if let Some(q) = query {
        match (&route, classify(path, None)) {
            (Route::Redirect(with), Route::Redirect(without)) => {
                assert_eq!(
                    with,
                    &format!("{without}?{q}"),
                    "redirect query for {path:?}"
                );
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
        let Route::Redirect(location) = &route else {
            panic!("{path:?} is not clean ({cleaned:?}) but routed {route:?}");
        };
        let target = cleaned.replace('\\', "%5C");
        let expected = match query {
            Some(q) => format!("{target}?{q}"),
            None => target.clone(),
        };
        assert_eq!(location, &expected, "redirect of {path:?}");
        assert!(
            target.starts_with('/') && !target.starts_with("//") && !target.contains('\\'),
            "redirect of {path:?} could leave the host: {target:?}"
        );
        // The client follows the redirect: that request must not redirect again, and must
        // obey the same security invariant.
        let followed = classify(&target, None);
        assert!(
            !matches!(followed, Route::Redirect(_)),
            "redirect loop: {path:?} -> {target:?} -> {followed:?}"
        );
        check_not_forwarded(&target, &followed);
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
    check_served(path, &route);
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

/// Characters an upstream might drop or stop at: controls (NUL truncation) and the
/// zero-width and bidi format characters the passthrough policy names as invisible.
fn is_droppable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
                | '\u{FEFF}'
        )
}

fn check_not_forwarded(path: &str, route: &Route) {
    if !matches!(route, Route::Passthrough) {
        return;
    }
    assert!(
        !reaches_credentials(path),
        "SECURITY: {path:?} reaches meta-data/iam or identity-credentials but is routed upstream \
         (passthrough policy with defaults: {})",
        if metadataproxy::policy::PathPolicy::default().allows(path) {
            "forwarded"
        } else {
            "refused"
        }
    );
    // What the agent actually forwards also passes the passthrough policy (default: allow
    // `**`, deny `user-data`), which refuses control and invisible characters. Forwarded
    // paths must not reach the credentials even for an upstream that truncates at NUL or
    // drops such characters.
    if metadataproxy::policy::PathPolicy::default().allows(path) {
        for view in decodings(path) {
            let dropped: String = view.chars().filter(|c| !is_droppable(*c)).collect();
            let truncated = view
                .split(|c: char| c.is_control())
                .next()
                .unwrap_or_default();
            assert!(
                !view_reaches_credentials(&dropped) && !view_reaches_credentials(truncated),
                "SECURITY: {path:?} is forwarded and reaches meta-data/iam or \
                 identity-credentials once control or invisible characters are dropped \
                 or the path is cut at a control character (decoded: {view:?})"
            );
        }
    }
}

/// What the served credential routes promise.
fn check_served(path: &str, route: &Route) {
    let views = decodings(path);
    let decoded = views.last().expect("one view");
    let segs: Vec<&str> = decoded
        .split('/')
        .filter(|s| !s.trim().is_empty())
        .collect();
    match route {
        Route::RoleName { version }
        | Route::Info { version }
        | Route::Credentials { version, .. } => {
            assert!(version.as_str() >= "2012-01-12", "{path:?}: {route:?}");
            assert!(
                segs.len() >= 3 && segs[0] == version && segs[1] == "meta-data" && segs[2] == "iam",
                "{path:?} served as {route:?}"
            );
            if let Route::Credentials { role, .. } = route {
                assert!(
                    !role.is_empty()
                        && !role
                            .chars()
                            .any(|c| c.is_control() || c == '/' || c == '\\'),
                    "{path:?}: role {role:?}"
                );
                assert_eq!(segs.get(4), Some(&role.as_str()), "{path:?}: {route:?}");
                assert_eq!(segs[3], "security-credentials", "{path:?}: {route:?}");
            }
        }
        Route::Token => {
            // `;params`-only segments are empty to the router's classification, as to a
            // server that drops parameters.
            let folded: Vec<String> = segs
                .iter()
                .map(|s| fold(s))
                .filter(|s| !s.is_empty())
                .collect();
            assert!(
                folded.len() >= 2 && folded[folded.len() - 2..] == ["api", "token"],
                "{path:?} routed to the token handler"
            );
        }
        _ => {}
    }
}
