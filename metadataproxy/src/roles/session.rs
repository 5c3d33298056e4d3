//! AssumeRole session settings derived from the calling container: the session name (a
//! template) and optional session tags, for CloudTrail attribution.

use crate::identity::Container;

/// A `ROLE_SESSION_NAME` template: literal text with `{container_name}`, `{container_id}`
/// (12 characters) and `{image}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    ContainerName,
    ContainerId,
    Image,
}

/// Why a `ROLE_SESSION_NAME` template was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionTemplateError {
    /// A `{` without its `}`.
    #[error("unclosed {{ in the template")]
    Unclosed,
    /// A placeholder other than the three there are.
    #[error("unknown placeholder {{{0}}} (use {{container_name}}, {{container_id}} or {{image}})")]
    UnknownPlaceholder(String),
    /// Literal text with characters STS refuses in a session name.
    #[error("expected characters of A-Z a-z 0-9 + = , . @ _ - around placeholders")]
    Characters,
    /// A template without placeholders that is too short or too long for STS.
    #[error("expected 2 to 64 characters")]
    Length,
}

/// STS `RoleSessionName` characters.
fn is_session_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+=,.@_-".contains(c)
}

impl SessionTemplate {
    /// Parses a template; literal text must already be valid session-name characters.
    pub fn parse(s: &str) -> Result<SessionTemplate, SessionTemplateError> {
        let mut parts = Vec::new();
        let mut rest = s;
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let end = rest.find('}').ok_or(SessionTemplateError::Unclosed)?;
                    parts.push(match &rest[1..end] {
                        "container_name" => Part::ContainerName,
                        "container_id" => Part::ContainerId,
                        "image" => Part::Image,
                        other => {
                            return Err(SessionTemplateError::UnknownPlaceholder(other.to_string()))
                        }
                    });
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    let literal = &rest[..end];
                    if !literal.chars().all(is_session_char) {
                        return Err(SessionTemplateError::Characters);
                    }
                    parts.push(Part::Literal(literal.to_string()));
                    rest = &rest[end..];
                }
            }
        }
        let template = SessionTemplate { parts };
        if template.is_static() && !(2..=64).contains(&s.len()) {
            return Err(SessionTemplateError::Length);
        }
        Ok(template)
    }

    fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// The session name for `container`: placeholders filled, other characters replaced by
    /// `-`, cut to 64 characters, at least 2.
    pub fn render(&self, container: &Container) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::ContainerName => out.push_str(&container.name),
                Part::ContainerId => out.push_str(container.short_id()),
                Part::Image => out.push_str(&container.image),
            }
        }
        let mut name: String = out
            .chars()
            .map(|c| if is_session_char(c) { c } else { '-' })
            .take(64)
            .collect();
        while name.len() < 2 {
            name.push('-');
        }
        name
    }
}

/// Session tags naming the container (needs `sts:TagSession` in the role's trust policy).
pub fn session_tags(container: &Container) -> Vec<(String, String)> {
    // Tag values: letters, digits, spaces and _ . : / = + - @, at most 256 characters.
    let clean = |v: &str| -> String {
        v.chars()
            .map(|c| {
                if c.is_alphanumeric() || " _.:/=+-@".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .take(256)
            .collect()
    };
    vec![
        ("ContainerId".into(), clean(container.short_id())),
        ("ContainerName".into(), clean(&container.name)),
        ("Image".into(), clean(&container.image)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container() -> Container {
        Container::from_env(
            "0123456789abcdef0123".into(),
            "/web_1".into(),
            "registry.example/team/app:1.2".into(),
            [],
        )
    }

    #[test]
    fn templates_render_from_the_container() {
        let t = SessionTemplate::parse("mp-{container_name}-{container_id}").unwrap();
        assert_eq!(t.render(&container()), "mp-web_1-0123456789ab");
        let t = SessionTemplate::parse("{image}").unwrap();
        assert_eq!(t.render(&container()), "registry.example-team-app-1.2");
        let t = SessionTemplate::parse("go-metadataproxy").unwrap();
        assert_eq!(t.render(&container()), "go-metadataproxy");
        let long = SessionTemplate::parse("{image}{image}{image}").unwrap();
        assert_eq!(long.render(&container()).len(), 64);
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "x",
            "{container}",
            "a{container_name",
            "has space",
            &"a".repeat(65),
        ] {
            assert!(SessionTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_name_the_container() {
        let tags = session_tags(&container());
        assert_eq!(tags[0], ("ContainerId".into(), "0123456789ab".into()));
        assert_eq!(tags[1], ("ContainerName".into(), "web_1".into()));
        assert_eq!(tags[2].1, "registry.example/team/app:1.2");
    }
}
