//! Request classification: a pure function from a request path to a [`Route`].
//!
//! Paths are classified after percent-decoding (repeatedly), backslash folding, dot-segment
//! resolution and case folding, so that no spelling of a path under `meta-data/iam` is ever
//! forwarded upstream, where it would reach the host's own credentials. Only the exact,
//! lower-case spellings of the credential routes are served; every other path under
//! `meta-data/iam` is answered 404 locally.

use std::borrow::Cow;

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// 301 to the cleaned path (`//`, `/./`, `/../` in the raw path).
    Redirect(String),
    /// `/{v}/meta-data/iam/security-credentials[/]`: the role name.
    RoleName {
        /// API version segment.
        version: String,
    },
    /// `/{v}/meta-data/iam/security-credentials/{role}[/]`: credentials.
    Credentials {
        /// API version segment.
        version: String,
        /// The requested role name, case preserved.
        role: String,
    },
    /// `/{v}/meta-data/iam/info[/{segment}]`: instance profile info.
    Info {
        /// API version segment.
        version: String,
    },
    /// Anything else under `meta-data/iam`: 404, never forwarded.
    IamDenied {
        /// API version segment, when there is one.
        version: Option<String>,
    },
    /// `.../api/token` (any case, any prefix): IMDSv2 tokens, minted by the agent, never
    /// forwarded.
    Token,
    /// `/favicon.ico`: 404.
    Favicon,
    /// A path that does not start with `/` (e.g. `*`): 400.
    BadPath,
    /// Everything else: forwarded upstream.
    Passthrough,
}

impl Route {
    /// The handler name used in logs and metrics (the contract's names, typo included).
    pub fn handler_name(&self) -> &'static str {
        match self {
            Route::RoleName { .. } => "iam-security-credentials-name",
            Route::Credentials { .. } => "iam-security-crentials-for-role",
            Route::Info { .. } => "iam-info-handler",
            Route::IamDenied { .. } => "iam-denied",
            Route::Redirect(_) => "redirect",
            Route::Token => "api-token",
            Route::Favicon => "favicon",
            Route::BadPath => "bad-path",
            Route::Passthrough => "passthrough",
        }
    }

    /// The API version segment, for logs and metrics.
    pub fn api_version(&self) -> Option<&str> {
        match self {
            Route::RoleName { version }
            | Route::Credentials { version, .. }
            | Route::Info { version } => Some(version),
            Route::IamDenied { version } => version.as_deref(),
            _ => None,
        }
    }
}

/// Classifies a request by its path and query.
pub fn classify(path: &str, query: Option<&str>) -> Route {
    if !path.starts_with('/') {
        return Route::BadPath;
    }
    let cleaned = clean_path(path);
    if cleaned != path {
        // A backslash in Location could be read as `/` by a client (`/\evil.example`).
        let cleaned = cleaned.replace('\\', "%5C");
        let location = match query {
            Some(q) => format!("{cleaned}?{q}"),
            None => cleaned,
        };
        return Route::Redirect(location);
    }
    if path == "/favicon.ico" {
        return Route::Favicon;
    }

    let decoded = decode_fully(path);
    // Real `.` and `..` segments were redirected above; what is left is disguised (encoded,
    // padded with white space, backslashed). A server upstream may read those as ordinary
    // names, or resolve them differently than this router would: refuse to guess.
    // Folded as segment names are below (`;params` dropped): `..;` is `..` to a server that
    // drops parameters before resolving dot segments.
    if decoded
        .split('/')
        .any(|seg| matches!(seg.split(';').next().unwrap_or_default().trim(), "." | ".."))
    {
        return Route::IamDenied { version: None };
    }
    let segments = resolve_segments(&decoded);
    // A segment that is only `;params` or white space is empty to a server that drops those
    // (`meta-data/;/iam` is `meta-data/iam` there): classification skips it, and such a path
    // is never served as a credential route either.
    let folded_all = fold(&segments);
    let has_blank = folded_all.iter().any(|s| s.is_empty());
    let folded: Vec<String> = folded_all.into_iter().filter(|s| !s.is_empty()).collect();
    // The instance's identity-role credentials are the host's too: never forwarded.
    if folded
        .windows(2)
        .any(|w| w[0] == "meta-data" && w[1] == "identity-credentials")
    {
        return Route::IamDenied { version: None };
    }
    // Any path ending in `api/token`: a token request is never forwarded, whatever its prefix.
    if let [.., api, token] = folded.as_slice() {
        if api == "api" && token == "token" {
            return Route::Token;
        }
    }
    let iam_at = folded
        .windows(2)
        .position(|w| w[0] == "meta-data" && w[1] == "iam");
    let Some(iam_at) = iam_at else {
        return Route::Passthrough;
    };

    if iam_at != 1 || has_blank {
        return Route::IamDenied { version: None };
    }
    let version = segments[0].to_string();
    let denied = Route::IamDenied {
        version: Some(version.clone()),
    };
    if !is_compatible_version(&version) {
        return denied;
    }
    let exact: Vec<&str> = segments.iter().map(|s| s.as_ref()).collect();
    match exact.as_slice() {
        [_, "meta-data", "iam", "security-credentials"] => Route::RoleName { version },
        [_, "meta-data", "iam", "security-credentials", role] if is_plain_segment(role) => {
            Route::Credentials {
                version,
                role: role.to_string(),
            }
        }
        [_, "meta-data", "iam", "info"] => Route::Info { version },
        [_, "meta-data", "iam", "info", one] if is_plain_segment(one) => Route::Info { version },
        _ => denied,
    }
}

/// `;params` and surrounding white space are dropped for classification only, so `iam;x` or
/// `iam%20` still count as `iam` here; case is folded.
fn fold(segments: &[Cow<'_, str>]) -> Vec<String> {
    segments
        .iter()
        .map(|s| {
            let s = s.split(';').next().unwrap_or_default();
            s.trim().to_lowercase()
        })
        .collect()
}

/// The path's segments as the router sees them: fully percent-decoded, dot segments resolved,
/// `;params` and white space dropped, lower-cased. Policies match on these, so that no
/// spelling of a path escapes them.
pub fn canonical_segments(path: &str) -> Vec<String> {
    let decoded = decode_fully(path);
    fold(&resolve_segments(&decoded))
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect()
}

/// `{v}` is compatible when it compares `>= "2012-01-12"` as a plain string, as the old
/// proxies decided (so `latest` passes).
fn is_compatible_version(v: &str) -> bool {
    v >= "2012-01-12"
}

fn is_plain_segment(s: &str) -> bool {
    !s.is_empty() && !s.chars().any(|c| c.is_control() || c == '\\' || c == '/')
}

/// Go's `path.Clean` as `net/http.ServeMux` applies it: dot segments and repeated slashes
/// resolved, a trailing slash kept.
pub fn clean_path(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut cleaned = String::with_capacity(p.len());
    for seg in &out {
        cleaned.push('/');
        cleaned.push_str(seg);
    }
    if cleaned.is_empty() {
        return "/".into();
    }
    if p.ends_with('/') {
        cleaned.push('/');
    }
    cleaned
}

/// Percent-decodes until nothing changes (bounded), so `%252F` counts as `/`.
fn decode_fully(p: &str) -> String {
    let mut current: String = p.replace('\\', "/");
    for _ in 0..4 {
        if !current.contains('%') {
            break;
        }
        let next: Cow<'_, str> = percent_encoding::percent_decode_str(&current).decode_utf8_lossy();
        let next = next.replace('\\', "/");
        if next == current {
            break;
        }
        current = next;
    }
    current
}

/// Splits a decoded path into segments with `.`/`..`/empty segments resolved.
fn resolve_segments(p: &str) -> Vec<Cow<'_, str>> {
    let mut out: Vec<Cow<'_, str>> = Vec::new();
    for seg in p.split('/') {
        match seg.trim() {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(Cow::Borrowed(seg)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(v: &str, role: &str) -> Route {
        Route::Credentials {
            version: v.into(),
            role: role.into(),
        }
    }

    #[test]
    fn contract_routes_are_served() {
        let name = Route::RoleName {
            version: "latest".into(),
        };
        let info = Route::Info {
            version: "latest".into(),
        };
        let cases = [
            ("/latest/meta-data/iam/security-credentials", name.clone()),
            ("/latest/meta-data/iam/security-credentials/", name),
            (
                "/latest/meta-data/iam/security-credentials/r",
                creds("latest", "r"),
            ),
            (
                "/latest/meta-data/iam/security-credentials/r/",
                creds("latest", "r"),
            ),
            (
                "/2016-09-02/meta-data/iam/security-credentials/My-Role",
                creds("2016-09-02", "My-Role"),
            ),
            ("/latest/meta-data/iam/info", info.clone()),
            ("/latest/meta-data/iam/info/", info.clone()),
            ("/latest/meta-data/iam/info/extra", info),
            ("/favicon.ico", Route::Favicon),
            ("/latest/meta-data/instance-id", Route::Passthrough),
            ("/latest/api/token", Route::Token),
            ("/2021-01-03/API/Token", Route::Token),
            ("/latest/api/token%2F", Route::Token),
            ("/latest/api/tokens", Route::Passthrough),
            ("/api/token", Route::Token),
            ("/x/latest/api/token", Route::Token),
            ("/", Route::Passthrough),
            ("/latest/meta-data/iamx", Route::Passthrough),
            ("/latest/meta-data/identity/iam", Route::Passthrough),
        ];
        for (path, want) in cases {
            assert_eq!(classify(path, None), want, "{path}");
        }
    }

    #[test]
    fn params_only_segments_neither_hide_nor_serve_iam_paths() {
        // Found by the router fuzz target.
        for path in [
            "/;t/latest/meta-data/iam/security-credentials",
            "/latest/;x/meta-data/iam/info",
            "/latest/meta-data/;/iam/security-credentials/r",
        ] {
            assert_eq!(
                classify(path, None),
                Route::IamDenied { version: None },
                "{path}"
            );
        }
    }

    #[test]
    fn non_canonical_paths_redirect_with_query() {
        assert_eq!(
            classify("/latest//meta-data/iam/info", Some("a=1")),
            Route::Redirect("/latest/meta-data/iam/info?a=1".into())
        );
        assert_eq!(
            classify("/latest/./meta-data/", None),
            Route::Redirect("/latest/meta-data/".into())
        );
        assert_eq!(
            classify("/x/../latest/meta-data/iam/", None),
            Route::Redirect("/latest/meta-data/iam/".into())
        );
        assert_eq!(classify("/..", None), Route::Redirect("/".into()));
        assert_eq!(
            classify("/./\\evil.example", None),
            Route::Redirect("/%5Cevil.example".into())
        );
        assert_eq!(classify("*", None), Route::BadPath);
    }

    /// Every one of these reaches IAM data in some spelling; none may be forwarded.
    const IAM_PATHS: &[&str] = &[
        "/latest/meta-data/iam/security-credentials/r/%20../%20../%20../%20..",
        "/latest/meta-data/iam/security-credentials/r/%20../%20../%2e%2e/%2e%2e",
        "/latest/meta-data/iam/info/%20../%20../%20../%2e%2e/%2e%2e/%2e%2e",
        "/latest/meta-data/iam/security-credentials/r/%252e%252e",
        "/latest/meta-data/iam/security-credentials/r/%5c..",
        "/latest/meta-data/iam/security-credentials/r/\\..",
        "/latest/meta-data/iam/security-credentials/r/%09..",
        "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
        // Found by the router fuzz target: `..;` resolves as `..` where `;params` are dropped.
        "/latest/meta-data/x/..;/iam/security-credentials/",
        "/latest/meta-data/x/%2e%2e;/iam/info",
        "/latest/meta-data/x/..;/identity-credentials/ec2/security-credentials/ec2-instance",
        "/latest/meta-data/x/.;/../iam/info",
        "/latest/meta-data/;/iam/security-credentials/r/x",
        "/latest/meta-data/%20;x/identity-credentials/ec2/info",
        "/latest/meta-data/Identity-Credentials/ec2/info",
        "/latest/meta-data/iam",
        "/latest/meta-data/iam/",
        "/latest/meta-data/iam/security-credentials/r/junk",
        "/latest/meta-data/iam/security-credentials/r/junk/",
        "/latest/meta-data/iam/info/a/b",
        "/latest/meta-data/iam/other",
        "/latest/meta-data/IAM/security-credentials/",
        "/latest/Meta-Data/iam/info",
        "/LATEST/META-DATA/IAM/INFO",
        "/2009-04-04/meta-data/iam/security-credentials/",
        "/1.0/meta-data/iam/info",
        "/2012-01-11/meta-data/iam/info",
        "/latest/meta-data%2Fiam%2Fsecurity-credentials%2F",
        "/latest/meta-data/iam%2Fsecurity-credentials%2Fr",
        "/latest/meta-data/%69am/info/x/y",
        "/latest/meta-data/%2e%2e/meta-data/iam/x/y",
        "/latest/meta-data/iam/%2e%2e/iam/x/y",
        "/latest/meta-data%252Fiam%252Finfo%252Fz%252Fz",
        "/latest/meta-data\\iam\\info\\a\\b",
        "/latest/meta-data/iam;x/info/y/z",
        "/latest/meta-data/iam%20/info/y/z",
        "/meta-data/iam/info",
        "/a/b/meta-data/iam/info",
        "/latest/user-data/../meta-data/iam/x/y",
        "/latest/meta-data/iam/security-credentials/%2F",
        "/latest/meta-data/iam/security-credentials/r%2Fjunk",
    ];

    #[test]
    fn no_spelling_of_an_iam_path_is_forwarded() {
        for path in IAM_PATHS {
            let route = classify(path, None);
            assert!(
                !matches!(route, Route::Passthrough),
                "{path} would be forwarded"
            );
        }
    }

    #[test]
    fn odd_iam_spellings_are_denied_not_served() {
        for path in [
            "/latest/meta-data/IAM/security-credentials/",
            "/2012-01-11/meta-data/iam/info",
            "/latest/meta-data/iam/security-credentials/r/junk",
            "/meta-data/iam/info",
        ] {
            assert!(
                matches!(classify(path, None), Route::IamDenied { .. }),
                "{path}"
            );
        }
    }

    #[test]
    fn versions_compare_as_strings() {
        assert!(is_compatible_version("latest"));
        assert!(is_compatible_version("2012-01-12"));
        assert!(is_compatible_version("2016-09-02"));
        assert!(!is_compatible_version("2012-01-11"));
        assert!(!is_compatible_version("1.0"));
    }

    #[test]
    fn clean_path_matches_go() {
        for (input, want) in [
            ("/", "/"),
            ("//", "/"),
            ("/a//b", "/a/b"),
            ("/a/./b/", "/a/b/"),
            ("/a/../b", "/b"),
            ("/../a", "/a"),
            ("/a/..", "/"),
        ] {
            assert_eq!(clean_path(input), want, "{input}");
        }
    }
}
