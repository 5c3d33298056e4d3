//! The canonical form of a request target: the one form every decision is taken on, and the
//! only form ever sent upstream (see [`crate::server::router`] for what each path is routed to).
//! A path is in the form when:
//!
//! - it is `/` or a run of `/segment`s, optionally ending in `/`;
//! - every segment is non-empty and made of the characters real metadata paths use: ASCII
//!   letters and digits and `- . _ : @ = , +` (instance tag keys, MAC addresses, public-key
//!   names, dates). A `%XX` escape is accepted only when it stands for one of these characters,
//!   and is decoded once;
//! - no segment starts or ends with `.` (so no `.`, `..`, `...`, `name.`);
//! - the first segment is an API version (`latest`, `YYYY-MM-DD`, `1.0`) and the second one of
//!   the service's trees: `meta-data`, `user-data`, `dynamic`, `api`;
//! - the version, the tree and the category below `meta-data/` are not decorated spellings of
//!   a name the agent decides on (`meta-data`, `user-data`, `dynamic`, `api`, `token`, `iam`,
//!   `identity-credentials`, `security-credentials`, `latest`): a segment there that equals one
//!   of them once case and punctuation are dropped must be exactly that name;
//! - no category below `meta-data/` other than `iam` and `identity-credentials` contains
//!   `iam`, `identity-credentials`, `security-credentials`, `meta-data`, `user-data` or `token`
//!   (compared the same way), and no deeper segment folds to one of them.
//!
//! Anything else has no [`CanonicalPath`]: the router answers it 404 and never forwards it, so
//! no spelling (encoded, overlong, full-width, decorated) can reach an upstream that might read
//! it as a credential path. A query is in the form when it is made of the segment characters
//! but `.`, with `&`.

/// A request target in the canonical form (see the module's contract): its path, and its
/// query when it had one in the form. Only [`canonical`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    target: String,
    path_len: usize,
}

impl CanonicalPath {
    /// The path, starting with `/`.
    pub fn as_str(&self) -> &str {
        &self.target[..self.path_len]
    }

    /// The path and the query, as forwarded upstream.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The path's segments, without the empty one a trailing `/` leaves.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.as_str().split('/').filter(|s| !s.is_empty())
    }
}

/// Characters a segment may hold, besides ASCII letters and digits.
pub const SEGMENT_PUNCTUATION: &str = "-._:@=,+";

/// Whether `b` may appear in a canonical segment.
pub fn is_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || SEGMENT_PUNCTUATION.as_bytes().contains(&b)
}

/// The trees under an API version that the agent serves or forwards.
const TREES: [&str; 4] = ["meta-data", "user-data", "dynamic", "api"];

/// Names the agent decides on. A segment that folds to one of them (case and punctuation
/// dropped) must be spelled exactly so.
const RESERVED: [&str; 9] = [
    "meta-data",
    "user-data",
    "dynamic",
    "api",
    "token",
    "iam",
    "identity-credentials",
    "security-credentials",
    "latest",
];

/// Names that no category below `meta-data/` may contain (other than `iam` and
/// `identity-credentials` themselves), and that no segment deeper down may fold to: the host's
/// credentials and user data live under them, and a lax upstream might find them anywhere.
const SENSITIVE: [&str; 6] = [
    "iam",
    "identity-credentials",
    "security-credentials",
    "meta-data",
    "user-data",
    "token",
];

/// Deeper paths are not canonical (real metadata paths have fewer than 10 segments).
pub const MAX_SEGMENTS: usize = 32;

/// Letters and digits only, lower-cased: how a lax server might compare names.
fn skeleton(s: &str) -> String {
    s.bytes()
        .filter(u8::is_ascii_alphanumeric)
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect()
}

fn is_version(s: &str) -> bool {
    let b = s.as_bytes();
    s == "latest"
        || s == "1.0"
        || (b.len() == 10
            && b.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                _ => c.is_ascii_digit(),
            }))
}

/// The canonical form of `path` and `query`, or `None` when they have none (see the module's
/// contract). A query is held to the segment characters but `.`, with `&` besides.
pub fn canonical(path: &str, query: Option<&str>) -> Option<CanonicalPath> {
    let rest = path.strip_prefix('/')?;
    let mut out = String::with_capacity(path.len() + query.map_or(0, |q| q.len() + 1));
    if rest.is_empty() {
        out.push('/');
    } else {
        let (body, trailing) = match rest.strip_suffix('/') {
            Some(body) => (body, true),
            None => (rest, false),
        };
        for (n, raw) in body.split('/').enumerate() {
            if n >= MAX_SEGMENTS {
                return None;
            }
            let start = out.len() + 1;
            out.push('/');
            decode_into(raw, &mut out, is_segment_byte)?;
            let seg = &out[start..];
            if seg.is_empty() || seg.starts_with('.') || seg.ends_with('.') {
                return None;
            }
        }
        if trailing {
            out.push('/');
        }
    }
    let path_len = out.len();
    if let Some(q) = query {
        out.push('?');
        decode_into(q, &mut out, |b| {
            (is_segment_byte(b) && b != b'.') || b == b'&'
        })?;
    }
    let canon = CanonicalPath {
        target: out,
        path_len,
    };
    structure_ok(&canon).then_some(canon)
}

/// Appends `raw`'s decoded bytes to `out`; `None` when one is not `allowed`.
fn decode_into(raw: &str, out: &mut String, allowed: impl Fn(u8) -> bool) -> Option<()> {
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let byte = if b[i] == b'%' {
            let hex = |c: u8| char::from(c).to_digit(16);
            let h = hex(*b.get(i + 1)?)?;
            let l = hex(*b.get(i + 2)?)?;
            i += 3;
            u8::try_from(h * 16 + l).ok()?
        } else {
            i += 1;
            b[i - 1]
        };
        if !allowed(byte) {
            return None;
        }
        out.push(char::from(byte));
    }
    Some(())
}

/// Whether `seg` folds to one of `names` without being spelled exactly as it.
fn decorates(seg: &str, names: &[&str]) -> bool {
    let folded = skeleton(seg);
    names
        .iter()
        .any(|name| skeleton(name) == folded && seg != *name)
}

/// The version, tree and reserved-name rules of the canonical form.
fn structure_ok(path: &CanonicalPath) -> bool {
    let segs: Vec<&str> = path.segments().collect();
    // Version, tree and category: where a server reads names as structure.
    if segs.iter().take(3).any(|seg| decorates(seg, &RESERVED)) {
        return false;
    }
    match segs.as_slice() {
        [] => true,
        [version, ..] if !is_version(version) => false,
        [_] => true,
        [_, tree, ..] if !TREES.contains(tree) => false,
        // Served or denied locally, never forwarded: the role name is the caller's business.
        [_, "meta-data", "iam" | "identity-credentials", ..] | [_, "api", ..] => true,
        [_, "meta-data", category, deeper @ ..] => {
            let folded = skeleton(category);
            !SENSITIVE
                .iter()
                .any(|name| folded.contains(&skeleton(name)))
                && !names_sensitive(deeper)
        }
        [_, _, deeper @ ..] => !names_sensitive(deeper),
    }
}

/// Whether a segment below a category folds to a sensitive name, spelled exactly or not.
fn names_sensitive(segs: &[&str]) -> bool {
    segs.iter().any(|seg| {
        let folded = skeleton(seg);
        SENSITIVE.iter().any(|name| skeleton(name) == folded)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for v in ["latest", "1.0", "2016-09-02"] {
            assert!(is_version(v), "{v}");
        }
        for v in ["Latest", "2016-9-02", "2016-09-02x", "1.1", "x"] {
            assert!(!is_version(v), "{v}");
        }
    }
}
