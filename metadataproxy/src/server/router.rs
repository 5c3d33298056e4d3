//! Request classification: a pure function from a request path to a [`Route`].
//!
//! Every decision is taken on the path's canonical form ([`crate::path`]). A path outside it is
//! [`Route::NotCanonical`]: answered 404 and never forwarded. Only `//`, `/./` and `/../` in the
//! raw path are redirected (301), and only when the cleaned path is in the form.

use crate::path::{canonical, clean_path, CanonicalPath};

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
    /// Anything else under `meta-data/iam` or `meta-data/identity-credentials`: 404, never
    /// forwarded.
    IamDenied {
        /// API version segment.
        version: String,
    },
    /// `/{v}/api/token`: IMDSv2 tokens, minted by the agent, never forwarded.
    Token,
    /// `/favicon.ico`: 404.
    Favicon,
    /// A request target that is not an origin-form path (e.g. `*`): 400.
    BadPath,
    /// A path outside the canonical form: 404, never forwarded.
    NotCanonical,
    /// Forwarded upstream: exactly this path, without the query.
    Passthrough(CanonicalPath),
    /// The container credentials endpoint: the caller's credentials.
    ContainerCredentials(ContainerTarget),
}

/// What a request to the container credentials endpoint asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerTarget {
    /// A path under `/v2/credentials/`, served to every container.
    Standard,
    /// Another target: served only when it is the container's own
    /// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (or `FULL_URI` path).
    Named,
}

/// The prefix of the container credentials paths every container is served on.
pub const CONTAINER_CREDENTIALS_PREFIX: &str = "/v2/credentials/";

/// Classifies a request to the container credentials endpoint. A path under
/// `/v2/credentials/` is [`ContainerTarget::Standard`] only when every segment after the
/// prefix is 1 to 128 bytes of `A-Za-z0-9._~-` (not `.` or `..`), with no query; any other
/// target can only be a container's own URI.
pub fn classify_container(path: &str, query: Option<&str>) -> Route {
    if !path.starts_with('/') {
        return Route::BadPath;
    }
    let standard = query.is_none()
        && path
            .strip_prefix(CONTAINER_CREDENTIALS_PREFIX)
            .is_some_and(|rest| {
                rest.len() <= 256
                    && rest.split('/').all(|seg| {
                        !seg.is_empty()
                            && seg.len() <= 128
                            && seg != "."
                            && seg != ".."
                            && seg
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
                    })
            });
    Route::ContainerCredentials(if standard {
        ContainerTarget::Standard
    } else {
        ContainerTarget::Named
    })
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
            Route::NotCanonical => "not-canonical",
            Route::Passthrough(_) => "passthrough",
            Route::ContainerCredentials(_) => "container-credentials",
        }
    }

    /// The API version segment, for logs and metrics.
    pub fn api_version(&self) -> Option<&str> {
        match self {
            Route::RoleName { version }
            | Route::Credentials { version, .. }
            | Route::Info { version }
            | Route::IamDenied { version } => Some(version),
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
        if canonical(&cleaned, query).is_none() {
            return Route::NotCanonical;
        }
        let location = match query {
            Some(q) => format!("{cleaned}?{q}"),
            None => cleaned,
        };
        return Route::Redirect(location);
    }
    if path == "/favicon.ico" {
        return Route::Favicon;
    }
    let Some(canon) = canonical(path, query) else {
        return Route::NotCanonical;
    };
    let segs: Vec<&str> = canon.segments().collect();
    let trailing = canon.as_str().ends_with('/');
    match segs.as_slice() {
        [_, "api", "token"] if !trailing => Route::Token,
        [_, "api", ..] => Route::NotCanonical,
        [version, "meta-data", "iam" | "identity-credentials", ..] => {
            iam_route(version, &segs[2..])
        }
        _ => Route::Passthrough(canon),
    }
}

/// The served IAM routes, exactly spelled, under a compatible version; every other path under
/// `meta-data/iam` or `meta-data/identity-credentials` is denied.
fn iam_route(version: &str, below: &[&str]) -> Route {
    let version = version.to_string();
    if !is_compatible_version(&version) {
        return Route::IamDenied { version };
    }
    match below {
        ["iam", "security-credentials"] => Route::RoleName { version },
        ["iam", "security-credentials", role] => Route::Credentials {
            version,
            role: role.to_string(),
        },
        ["iam", "info"] | ["iam", "info", _] => Route::Info { version },
        _ => Route::IamDenied { version },
    }
}

/// `{v}` is compatible when it compares `>= "2012-01-12"` as a plain string, as the old
/// proxies decided (so `latest` passes).
fn is_compatible_version(v: &str) -> bool {
    v >= "2012-01-12"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::*;
    use crate::testing::{DISGUISES, IAM_PATHS};

    #[test]
    fn container_targets() {
        let standard = Route::ContainerCredentials(ContainerTarget::Standard);
        let named = Route::ContainerCredentials(ContainerTarget::Named);
        for p in [
            "/v2/credentials/abc",
            "/v2/credentials/0b9f6a8e-3c1d-4b1e-9f7a-2d8c5e6f7a8b",
            "/v2/credentials/a/b.c_d~e-f",
        ] {
            assert_eq!(classify_container(p, None), standard, "{p}");
        }
        for p in [
            "/v2/credentials/",
            "/v2/credentials",
            "/v2/credentials//a",
            "/v2/credentials/a/",
            "/v2/credentials/../a",
            "/v2/credentials/./a",
            "/v2/credentials/a/..",
            "/v2/credentials/%2e%2e",
            "/v2/credentials/a b",
            "/V2/credentials/a",
            "/v2/credentials/a;b",
            "/latest/meta-data/iam/security-credentials/r",
            "/creds",
        ] {
            assert_eq!(classify_container(p, None), named, "{p}");
        }
        assert_eq!(classify_container("/v2/credentials/a", Some("x=1")), named);
        let long = format!("/v2/credentials/{}", "a".repeat(129));
        assert_eq!(classify_container(&long, None), named);
        assert_eq!(classify_container("*", None), Route::BadPath);
    }

    fn creds(v: &str, role: &str) -> Route {
        Route::Credentials {
            version: v.into(),
            role: role.into(),
        }
    }

    fn forwarded(target: &str) -> Option<String> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        match classify(path, query) {
            Route::Passthrough(canon) => Some(canon.target().to_string()),
            _ => None,
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
            (
                "/latest/meta-data/iam/security-credentials/a+b=c,d.e@f_g-h",
                creds("latest", "a+b=c,d.e@f_g-h"),
            ),
            ("/latest/meta-data/iam/info", info.clone()),
            ("/latest/meta-data/iam/info/", info.clone()),
            ("/latest/meta-data/iam/info/extra", info),
            ("/favicon.ico", Route::Favicon),
            ("/latest/api/token", Route::Token),
            ("/2021-01-03/api/token", Route::Token),
        ];
        for (path, want) in cases {
            assert_eq!(classify(path, None), want, "{path}");
        }
    }

    /// Paths of the real service's documented categories: forwarded as they are.
    const REAL_PATHS: &[&str] = &[
        "/",
        "/latest",
        "/latest/",
        "/latest/meta-data",
        "/latest/meta-data/",
        "/latest/meta-data/ami-id",
        "/latest/meta-data/ami-launch-index",
        "/latest/meta-data/block-device-mapping/ebs0",
        "/latest/meta-data/events/maintenance/scheduled",
        "/latest/meta-data/hostname",
        "/latest/meta-data/instance-id",
        "/latest/meta-data/instance-life-cycle",
        "/latest/meta-data/local-ipv4",
        "/latest/meta-data/mac",
        "/latest/meta-data/network/interfaces/macs/",
        "/latest/meta-data/network/interfaces/macs/02:29:96:8f:6a:2d/subnet-ipv4-cidr-block",
        "/latest/meta-data/network/interfaces/macs/02:29:96:8f:6a:2d/ipv6s",
        "/latest/meta-data/placement/availability-zone",
        "/latest/meta-data/placement/region",
        "/latest/meta-data/public-keys/",
        "/latest/meta-data/public-keys/0/openssh-key",
        "/latest/meta-data/public-keys/0=my-key",
        "/latest/meta-data/security-groups",
        "/latest/meta-data/services/domain",
        "/latest/meta-data/spot/instance-action",
        "/latest/meta-data/autoscaling/target-lifecycle-state",
        "/latest/meta-data/tags/instance",
        "/latest/meta-data/tags/instance/Name",
        "/latest/meta-data/tags/instance/aws:autoscaling:groupName",
        "/latest/meta-data/tags/instance/team+cost=a,b@c_d",
        "/latest/meta-data/elastic-inference/associations/eia-bfa21c7904f64a82a21b9f4540169ce1",
        "/latest/dynamic/instance-identity/document",
        "/latest/dynamic/instance-identity/pkcs7",
        "/latest/dynamic/fws/instance-monitoring",
        "/latest/user-data",
        "/2016-09-02/meta-data/instance-id",
        "/1.0/meta-data/instance-id",
    ];

    #[test]
    fn real_service_paths_are_forwarded_unchanged() {
        for path in REAL_PATHS {
            assert_eq!(forwarded(path).as_deref(), Some(*path), "{path}");
        }
        assert_eq!(
            forwarded("/latest/meta-data/instance-id?a=1&b=c").as_deref(),
            Some("/latest/meta-data/instance-id?a=1&b=c")
        );
    }

    #[test]
    fn escapes_of_allowed_characters_are_forwarded_decoded() {
        assert_eq!(
            forwarded("/latest/meta-data/network/interfaces/macs/02%3A29%3a96:8f:6a:2d/mac")
                .as_deref(),
            Some("/latest/meta-data/network/interfaces/macs/02:29:96:8f:6a:2d/mac")
        );
        assert_eq!(
            forwarded("/latest/meta-data/tags/instance/a%3Db?x%3D1").as_deref(),
            Some("/latest/meta-data/tags/instance/a=b?x=1")
        );
    }

    #[test]
    fn disguised_paths_are_not_canonical_and_never_forwarded() {
        for path in DISGUISES {
            let route = classify(path, None);
            assert!(
                !matches!(route, Route::Passthrough(_) | Route::Token),
                "{path} routed {route:?}"
            );
        }
        for query in ["%00", "a%20b", "x=%2e%2e%2fiam", "x=../iam", "a;b", "a%25"] {
            assert_eq!(
                classify("/latest/meta-data/instance-id", Some(query)),
                Route::NotCanonical,
                "{query}"
            );
        }
    }

    #[test]
    fn no_spelling_of_an_iam_path_is_forwarded() {
        for path in IAM_PATHS {
            assert_eq!(forwarded(path), None, "{path}");
        }
    }

    #[test]
    fn iam_paths_outside_the_served_routes_are_denied() {
        for path in [
            "/latest/meta-data/iam",
            "/latest/meta-data/iam/",
            "/latest/meta-data/iam/security-credentials/r/junk",
            "/latest/meta-data/iam/info/a/b",
            "/latest/meta-data/iam/other",
            "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
            "/2009-04-04/meta-data/iam/security-credentials/",
            "/1.0/meta-data/iam/info",
        ] {
            assert!(
                matches!(classify(path, None), Route::IamDenied { .. }),
                "{path}"
            );
        }
    }

    #[test]
    fn dot_segments_redirect_only_into_the_form() {
        assert_eq!(
            classify("/latest//meta-data/iam/info", Some("a=1")),
            Route::Redirect("/latest/meta-data/iam/info?a=1".into())
        );
        assert_eq!(
            classify("/latest/./meta-data/", None),
            Route::Redirect("/latest/meta-data/".into())
        );
        assert_eq!(
            classify("/latest/meta-data/x/../iam/", None),
            Route::Redirect("/latest/meta-data/iam/".into())
        );
        assert_eq!(classify("/..", None), Route::Redirect("/".into()));
        for (path, query) in [
            ("/./\\evil.example", None),
            ("//evil.example/latest", None),
            ("/latest/./meta-data%00", None),
            ("/latest/../user_data", None),
            ("/latest//meta-data", Some("%00")),
        ] {
            assert_eq!(classify(path, query), Route::NotCanonical, "{path}");
        }
        assert_eq!(classify("*", None), Route::BadPath);
    }

    #[test]
    fn depth_is_bounded() {
        let deep = format!("/latest/meta-data{}", "/a".repeat(MAX_SEGMENTS - 2));
        assert!(forwarded(&deep).is_some());
        assert_eq!(classify(&format!("{deep}/a"), None), Route::NotCanonical);
    }

    #[test]
    fn versions() {
        assert!(is_compatible_version("latest"));
        assert!(is_compatible_version("2012-01-12"));
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
