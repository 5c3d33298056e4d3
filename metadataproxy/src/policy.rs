//! What containers may reach: passthrough paths (`PASSTHROUGH_ALLOW`, `PASSTHROUGH_DENY`) and
//! roles (`ALLOWED_ROLES`, `ROLE_POLICY_FILE`).
//!
//! Path patterns are matched against the request path after the API version segment, in the
//! canonical form (`path::canonical`: the only form ever forwarded), with case folded, segment
//! by segment: `*` and `?` match within a segment, `**` matches any number of segments. A pattern
//! covers its subtree: `user-data` matches `/latest/user-data` and everything under it. A path
//! is forwarded when an allow pattern matches it and no deny pattern does (deny wins).
//!
//! Role patterns are matched against the whole role ARN; `*` matches any run of characters
//! (`/` included, as in IAM policies) and `?` one character.
//!
//! A pattern or policy file that cannot be used is a [`PolicyError`] naming the pattern; the
//! configuration adds the variable.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::identity::Container;
use crate::path::CanonicalPath;

/// `*` (any run) and `?` (one character) over `text`, case-sensitive.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative wildcard matching with backtracking to the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Why a pattern or the role policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A pattern with whitespace or control characters.
    #[error("{pattern:?}: no spaces or control characters")]
    Unprintable {
        /// The pattern.
        pattern: String,
    },
    /// A path pattern with `//`.
    #[error("{pattern:?}: empty segment")]
    EmptySegment {
        /// The pattern.
        pattern: String,
    },
    /// A path pattern with `**` inside a segment (`a**`).
    #[error("{pattern:?}: `**` must be a whole segment")]
    PartialDoubleStar {
        /// The pattern.
        pattern: String,
    },
    /// A path pattern that starts with the API version.
    #[error(
        "{pattern:?}: patterns start after the API version (write `user-data`, not \
         `latest/user-data`)"
    )]
    ApiVersion {
        /// The pattern.
        pattern: String,
    },
    /// A path pattern deeper than any canonical path.
    #[error("{pattern:?}: more than {MAX_SEGMENTS} segments")]
    TooDeep {
        /// The pattern.
        pattern: String,
    },
    /// A role pattern that is not a whole ARN.
    #[error("{pattern:?}: role patterns match whole ARNs (arn:aws:iam::123456789012:role/...)")]
    NotAnArn {
        /// The pattern.
        pattern: String,
    },
    /// The role policy file is not the expected JSON.
    #[error("{0}")]
    Json(#[source] serde_json::Error),
    /// A role policy rule with an empty `roles` list.
    #[error("a rule with no roles allows nothing")]
    RuleWithoutRoles,
}

/// A path pattern, split into segments.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PathPattern(Vec<String>);

impl PathPattern {
    fn parse(raw: &str) -> Result<PathPattern, PolicyError> {
        let pattern = || raw.to_string();
        let trimmed = raw.trim().trim_matches('/');
        if is_unprintable(trimmed) {
            return Err(PolicyError::Unprintable { pattern: pattern() });
        }
        let segments: Vec<String> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split('/').map(str::to_lowercase).collect()
        };
        if segments.iter().any(|s| s.is_empty()) {
            return Err(PolicyError::EmptySegment { pattern: pattern() });
        }
        if segments.iter().any(|s| s.contains("**") && s != "**") {
            return Err(PolicyError::PartialDoubleStar { pattern: pattern() });
        }
        if segments
            .first()
            .is_some_and(|f| f == "latest" || f.starts_with(|c: char| c.is_ascii_digit()))
        {
            return Err(PolicyError::ApiVersion { pattern: pattern() });
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(PolicyError::TooDeep { pattern: pattern() });
        }
        Ok(PathPattern(segments))
    }

    /// Whether the pattern matches `path` or one of its ancestors: the pattern with an
    /// implicit trailing `**`, matched in O(pattern × path) (no backtracking blow-up).
    fn covers(&self, path: &[String]) -> bool {
        let n = path.len();
        // reach[j]: the pattern's segments so far can match path[..j].
        let mut reach = vec![false; n + 1];
        reach[0] = true;
        for seg in &self.0 {
            let mut next = vec![false; n + 1];
            if seg == "**" {
                let mut any = false;
                for j in 0..=n {
                    any |= reach[j];
                    next[j] = any;
                }
            } else {
                for j in 0..n {
                    if reach[j] && glob_match(seg, &path[j]) {
                        next[j + 1] = true;
                    }
                }
            }
            reach = next;
        }
        // The implicit trailing `**`: a matched prefix covers the rest.
        reach.iter().any(|r| *r)
    }
}

/// Which passthrough paths are forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPolicy {
    allow: Vec<PathPattern>,
    deny: Vec<PathPattern>,
}

/// Patterns deeper than this are refused: no canonical path is deeper.
const MAX_SEGMENTS: usize = crate::path::MAX_SEGMENTS;

/// `PASSTHROUGH_ALLOW`'s default: everything.
pub const DEFAULT_ALLOW: &str = "**";
/// `PASSTHROUGH_DENY`'s default: the instance's user data (bootstrap scripts, often secrets).
pub const DEFAULT_DENY: &str = "user-data";

impl PathPolicy {
    /// Parses comma lists of patterns.
    pub fn parse(allow: &str, deny: &str) -> Result<PathPolicy, PolicyError> {
        let list = |raw: &str| -> Result<Vec<PathPattern>, PolicyError> {
            raw.split(',')
                .filter(|p| !p.trim().is_empty())
                .map(PathPattern::parse)
                .collect()
        };
        Ok(PathPolicy {
            allow: list(allow)?,
            deny: list(deny)?,
        })
    }

    /// Whether a request for `path` may be forwarded.
    pub fn allows(&self, path: &CanonicalPath) -> bool {
        let segments: Vec<String> = path.segments().map(str::to_lowercase).collect();
        // The first segment is the API version (`latest`, a date): patterns start after it.
        let rest = segments.get(1..).unwrap_or(&[]);
        self.allow.iter().any(|p| p.covers(rest)) && !self.deny.iter().any(|p| p.covers(rest))
    }
}

impl Default for PathPolicy {
    fn default() -> Self {
        PathPolicy::parse(DEFAULT_ALLOW, DEFAULT_DENY).expect("default patterns parse")
    }
}

/// One rule of the role policy: these roles, for containers with this image and these labels.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    /// Role ARN patterns.
    pub roles: Vec<String>,
    /// Image patterns; empty: any image.
    #[serde(default)]
    pub images: Vec<String>,
    /// Labels the container must carry with exactly these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl RoleRule {
    fn applies(&self, role_arn: &str, container: &Container) -> bool {
        self.roles.iter().any(|p| glob_match(p, role_arn))
            && (self.images.is_empty()
                || self.images.iter().any(|p| glob_match(p, &container.image)))
            && self
                .labels
                .iter()
                .all(|(k, v)| container.docker_labels.get(k) == Some(v))
    }
}

/// The `ROLE_POLICY_FILE` document.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    rules: Vec<RoleRule>,
}

/// Which roles containers may assume. No rules: any role (the old proxies' behaviour).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolePolicy {
    rules: Vec<RoleRule>,
}

impl RolePolicy {
    /// This policy with the rules of `ROLE_POLICY_FILE`'s JSON added.
    pub fn with_file(mut self, json: &str) -> Result<RolePolicy, PolicyError> {
        self.rules.extend(RolePolicy::parse("", Some(json))?.rules);
        Ok(self)
    }

    /// From `ALLOWED_ROLES` (ARN patterns for every container) and the rules of
    /// `ROLE_POLICY_FILE`'s JSON (`{"rules": [{"roles": [...], "images": [...], "labels":
    /// {...}}]}`).
    pub fn parse(allowed: &str, file: Option<&str>) -> Result<RolePolicy, PolicyError> {
        let mut rules = Vec::new();
        let patterns: Vec<String> = allowed
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect();
        for p in &patterns {
            check_arn_pattern(p)?;
        }
        if !patterns.is_empty() {
            rules.push(RoleRule {
                roles: patterns,
                images: Vec::new(),
                labels: BTreeMap::new(),
            });
        }
        if let Some(json) = file {
            let doc: PolicyFile = serde_json::from_str(json).map_err(PolicyError::Json)?;
            for rule in &doc.rules {
                if rule.roles.is_empty() {
                    return Err(PolicyError::RuleWithoutRoles);
                }
                for p in &rule.roles {
                    check_arn_pattern(p)?;
                }
            }
            rules.extend(doc.rules);
        }
        Ok(RolePolicy { rules })
    }

    /// Whether any rule is set.
    pub fn is_restricted(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Whether `container` may assume `role_arn`.
    pub fn allows(&self, role_arn: &str, container: &Container) -> bool {
        self.rules.is_empty() || self.rules.iter().any(|r| r.applies(role_arn, container))
    }
}

fn check_arn_pattern(p: &str) -> Result<(), PolicyError> {
    if !p.starts_with("arn:") && p != "*" {
        return Err(PolicyError::NotAnArn {
            pattern: p.to_string(),
        });
    }
    if is_unprintable(p) {
        return Err(PolicyError::Unprintable {
            pattern: p.to_string(),
        });
    }
    Ok(())
}

fn is_unprintable(p: &str) -> bool {
    p.chars().any(|c| c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(
            "arn:aws:iam::*:role/app/*",
            "arn:aws:iam::1:role/app/x/y"
        ));
        assert!(!glob_match(
            "arn:aws:iam::*:role/app/*",
            "arn:aws:iam::1:role/other"
        ));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
        assert!(glob_match("**x", "aax"));
        assert!(!glob_match("", "a"));
    }

    /// The canonical form of a path the router forwards.
    fn canon(path: &str) -> CanonicalPath {
        match crate::server::router::classify(path, None) {
            crate::server::router::Route::Passthrough(c) => c,
            other => panic!("{path} is not forwarded: {other:?}"),
        }
    }

    #[test]
    fn default_policy_denies_user_data_and_its_spellings_never_get_here() {
        let p = PathPolicy::default();
        for allowed in [
            "/latest/meta-data/instance-id",
            "/latest/",
            "/",
            "/latest/dynamic/instance-identity/document",
        ] {
            assert!(p.allows(&canon(allowed)), "{allowed}");
        }
        for denied in [
            "/latest/user-data",
            "/latest/user-data/",
            "/2009-04-04/user-data",
            "/latest/user%2Ddata",
            "/latest/user-data/part/1",
        ] {
            assert!(!p.allows(&canon(denied)), "{denied}");
        }
        // Other spellings are not in the canonical form: the router answers them itself.
        for spelling in [
            "/latest/USER-DATA",
            "/latest/user%252Ddata",
            "/latest/user-data;x",
            "/latest/user-data%20",
            "/user-data",
            "/latest/user-data%00",
            "/latest/user-data%E2%80%8B",
            "/latest/user-datax",
        ] {
            assert_eq!(
                crate::server::router::classify(spelling, None),
                crate::server::router::Route::NotCanonical,
                "{spelling}"
            );
        }
    }

    #[test]
    fn deep_patterns_match_linearly() {
        // With backtracking, `**/user-data` against 8,000 segments took seconds per request.
        let p = PathPolicy::parse("**", "**/mac,meta-data/**/mac").unwrap();
        assert!(p.allows(&canon(&format!("/latest/meta-data{}x", "/a".repeat(29)))));
        assert!(!p.allows(&canon("/latest/meta-data/a/b/c/mac")));
        let many: Vec<String> = (0..10_000).map(|_| "a".to_string()).collect();
        assert!(!PathPattern::parse("**/a/**/a/**/b").unwrap().covers(&many));
    }

    #[test]
    fn allow_lists_and_deny_wins() {
        let p = PathPolicy::parse(
            "meta-data/placement/*,meta-data/instance-id",
            "meta-data/placement/region",
        )
        .unwrap();
        assert!(p.allows(&canon("/latest/meta-data/instance-id")));
        assert!(p.allows(&canon("/latest/meta-data/placement/availability-zone")));
        assert!(!p.allows(&canon("/latest/meta-data/placement/region")));
        assert!(!p.allows(&canon("/latest/meta-data/ami-id")));
        assert!(!p.allows(&canon("/latest/meta-data/")));
        let any = PathPolicy::parse("**", "meta-data/**/mac").unwrap();
        assert!(!any.allows(&canon("/latest/meta-data/network/interfaces/macs/x/mac")));
        assert!(any.allows(&canon("/latest/meta-data/network/interfaces/macs/")));
        assert!(PathPolicy::parse("a/**b", "").is_err());
        assert!(PathPolicy::parse("", "latest/user-data").is_err());
        assert!(PathPolicy::parse("", "2009-04-04/user-data").is_err());
        assert!(PathPolicy::parse("a//b", "").is_err());
    }

    fn container(image: &str, labels: &[(&str, &str)]) -> Container {
        let mut c = Container::from_env("id".into(), "n".into(), image.into(), []);
        c.docker_labels = std::sync::Arc::new(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        c
    }

    #[test]
    fn role_policy_by_arn_image_and_label() {
        let none = RolePolicy::parse("", None).unwrap();
        assert!(none.allows("arn:aws:iam::1:role/anything", &container("i", &[])));
        let file = r#"{"rules": [
            {"roles": ["arn:aws:iam::1:role/team-a/*"], "labels": {"team": "a"}},
            {"roles": ["arn:aws:iam::1:role/batch"], "images": ["registry.example/batch:*"]}
        ]}"#;
        let p = RolePolicy::parse("arn:aws:iam::1:role/shared-*", Some(file)).unwrap();
        let plain = container("nginx:1", &[]);
        let team_a = container("app:1", &[("team", "a")]);
        let batch = container("registry.example/batch:7", &[]);
        assert!(p.allows("arn:aws:iam::1:role/shared-read", &plain));
        assert!(!p.allows("arn:aws:iam::1:role/team-a/web", &plain));
        assert!(p.allows("arn:aws:iam::1:role/team-a/web", &team_a));
        assert!(!p.allows("arn:aws:iam::1:role/batch", &team_a));
        assert!(p.allows("arn:aws:iam::1:role/batch", &batch));
        assert!(!p.allows("arn:aws:iam::2:role/shared-read", &plain));
        assert!(RolePolicy::parse("my-role", None).is_err());
        assert!(RolePolicy::parse("", Some("{\"rules\": [{\"roles\": []}]}")).is_err());
        assert!(RolePolicy::parse("", Some("{\"rulez\": []}")).is_err());
    }
}
