//! The token key file (`TOKEN_KEY_FILE`): the keys IMDSv2 tokens are sealed with, kept across
//! restarts so that a token a client holds stays valid for its whole TTL, as on EC2.
//!
//! Text, one record per line, nothing else accepted:
//!
//! ```text
//! metadataproxy-token-key v1
//! current <created, Unix seconds> <32 bytes, base64url without padding>
//! previous <valid until, Unix seconds> <32 bytes, base64url without padding>
//! ```
//!
//! The `previous` line is there for `MAX_TTL` after a rotation: tokens sealed with the old key
//! stay valid until they expire. The file must be a regular file (not a link), owned by the
//! agent's user and readable by nobody else (mode 0600 or stricter); anything else stops
//! start-up with a message naming the file. It is written whole into a temporary file beside
//! it and renamed into place, so a crash never leaves half a key.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Length of a key.
pub const KEY_LEN: usize = 32;
const HEADER: &str = "metadataproxy-token-key v1";
/// A file with two records is under 200 bytes; anything much larger is not a key file.
const MAX_FILE_LEN: u64 = 1024;

/// A key's bytes, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBytes(pub [u8; KEY_LEN]);

impl std::fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyBytes(***)")
    }
}

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The key new tokens are sealed with.
    pub current: KeyBytes,
    /// When it was made (Unix seconds): rotation counts from here.
    pub created: u64,
    /// The key before the last rotation, and until when (Unix seconds) its tokens are valid.
    pub previous: Option<(KeyBytes, u64)>,
}

/// Reads the key file at `path`: `Ok(None)` when there is none. The error says what is wrong
/// with it, without naming the variable or printing any key.
pub fn read(path: &Path) -> Result<Option<Stored>, String> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err("it is a symbolic link; expected a regular file".into())
        }
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read its attributes: {e}"))?;
    check_attributes(&meta, path)?;
    let mut text = String::new();
    std::io::Read::by_ref(&mut file)
        .take(MAX_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() as u64 > MAX_FILE_LEN {
        return Err(format!(
            "it is over {MAX_FILE_LEN} bytes, the wrong size for a token key file"
        ));
    }
    parse(&text).map(Some)
}

fn check_attributes(meta: &std::fs::Metadata, path: &Path) -> Result<(), String> {
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(format!(
            "it is owned by uid {}, but the agent runs as uid {euid}: anyone who can replace \
             the key can forge tokens",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "its permissions {mode:04o} let others read or change it; expected 0600 \
             (chmod 600 {})",
            path.display()
        ));
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(format!(
            "it is {} bytes, the wrong size for a token key file (at most {MAX_FILE_LEN})",
            meta.len()
        ));
    }
    Ok(())
}

/// Parses the file's text.
pub fn parse(text: &str) -> Result<Stored, String> {
    if text.contains('\r') {
        return Err("it has carriage returns: not a token key file".into());
    }
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    match lines.next() {
        Some((_, HEADER)) => {}
        _ => {
            return Err(format!(
                "it does not start with `{HEADER}`: not a token key file"
            ))
        }
    }
    let (n, line) = lines
        .next()
        .ok_or("it has no `current` line: the wrong size for a token key file")?;
    let (created, current) = record(n, line, "current")?;
    let previous = match lines.next() {
        None => None,
        Some((n, line)) => {
            let (until, key) = record(n, line, "previous")?;
            Some((key, until))
        }
    };
    if let Some((n, _)) = lines.next() {
        return Err(format!(
            "line {n}: unexpected; a token key file has at most three lines"
        ));
    }
    if !text.ends_with('\n') {
        return Err("its last line is cut short (no newline): the wrong size".into());
    }
    Ok(Stored {
        current,
        created,
        previous,
    })
}

fn record(n: usize, line: &str, name: &str) -> Result<(u64, KeyBytes), String> {
    let mut fields = line.split(' ');
    if fields.next() != Some(name) {
        return Err(format!("line {n}: expected a `{name}` record"));
    }
    let time = fields
        .next()
        .filter(|t| {
            !t.is_empty()
                && t.len() <= 12
                && t.bytes().all(|b| b.is_ascii_digit())
                && (t.len() == 1 || !t.starts_with('0'))
        })
        .and_then(|t| t.parse::<u64>().ok())
        .ok_or_else(|| format!("line {n}: expected a time in Unix seconds after `{name}`"))?;
    let encoded = fields
        .next()
        .ok_or_else(|| format!("line {n}: no key after the time"))?;
    if fields.next().is_some() {
        return Err(format!("line {n}: unexpected text after the key"));
    }
    if !encoded
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("line {n}: the key is not base64url"));
    }
    let raw = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| {
        format!(
            "line {n}: the key is {} characters, the wrong size (expected {})",
            encoded.len(),
            (KEY_LEN * 4).div_ceil(3)
        )
    })?;
    let key: [u8; KEY_LEN] = raw.as_slice().try_into().map_err(|_| {
        format!(
            "line {n}: the key is {} bytes, the wrong size (expected {KEY_LEN})",
            raw.len()
        )
    })?;
    Ok((time, KeyBytes(key)))
}

/// The file's text for `stored`.
pub fn render(stored: &Stored) -> String {
    let mut out = format!(
        "{HEADER}\ncurrent {} {}\n",
        stored.created,
        URL_SAFE_NO_PAD.encode(stored.current.0)
    );
    if let Some((key, until)) = &stored.previous {
        out.push_str(&format!(
            "previous {until} {}\n",
            URL_SAFE_NO_PAD.encode(key.0)
        ));
    }
    out
}

/// Writes a first key file at `path`, unless one appeared meanwhile (another agent starting
/// at the same moment): `Ok(false)` then, and the caller reads that one. Missing directories
/// are created, mode 0700.
pub fn create(path: &Path, stored: &Stored) -> Result<bool, String> {
    let dir = directory(path)?;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)
            .map_err(|e| format!("cannot create its directory {}: {e}", dir.display()))?;
    }
    let tmp = write_temporary(&dir, path, stored)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_directory(&dir);
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(format!("cannot create it: {e}")),
    }
}

/// Replaces the key file at `path` with `stored`, whole (after a rotation).
pub fn replace(path: &Path, stored: &Stored) -> Result<(), String> {
    let dir = directory(path)?;
    let tmp = write_temporary(&dir, path, stored)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot replace it: {e}"));
    }
    sync_directory(&dir);
    Ok(())
}

fn directory(path: &Path) -> Result<PathBuf, String> {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => Ok(d.to_path_buf()),
        _ => Err("it has no directory".into()),
    }
}

/// A new file (mode 0600) beside `path` holding `stored`, flushed to disk.
fn write_temporary(dir: &Path, path: &Path, stored: &Stored) -> Result<PathBuf, String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.{}.{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| format!("cannot write a file in {}: {e}", dir.display()))?;
    let written = file
        .write_all(render(stored).as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot write a file in {}: {e}", dir.display()));
    }
    Ok(tmp)
}

/// Makes a rename or link durable; best effort (some filesystems refuse to sync directories).
fn sync_directory(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn stored() -> Stored {
        Stored {
            current: KeyBytes([7; KEY_LEN]),
            created: 1_800_000_000,
            previous: Some((KeyBytes([9; KEY_LEN]), 1_800_021_600)),
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mp-keyfile-{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn render_and_parse_round_trip() {
        let s = stored();
        assert_eq!(parse(&render(&s)).unwrap(), s);
        let single = Stored {
            previous: None,
            ..stored()
        };
        assert_eq!(parse(&render(&single)).unwrap(), single);
    }

    #[test]
    fn malformed_files_are_refused_with_the_reason() {
        let good = render(&stored());
        let key = URL_SAFE_NO_PAD.encode([1u8; KEY_LEN]);
        let short = URL_SAFE_NO_PAD.encode([1u8; 16]);
        let long = URL_SAFE_NO_PAD.encode([1u8; 64]);
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "does not start"),
            ("garbage\n".into(), "does not start"),
            (format!("{HEADER}\n"), "no `current`"),
            (format!("{HEADER}\ncurrent 1 {short}\n"), "16 bytes"),
            (format!("{HEADER}\ncurrent 1 {long}\n"), "64 bytes"),
            (format!("{HEADER}\ncurrent 1 !!!\n"), "not base64url"),
            (
                format!("{HEADER}\ncurrent 1 {}\n", &key[..33]),
                "wrong size",
            ),
            (format!("{HEADER}\ncurrent x {key}\n"), "Unix seconds"),
            (format!("{HEADER}\ncurrent -1 {key}\n"), "Unix seconds"),
            (format!("{HEADER}\ncurrent 01 {key}\n"), "Unix seconds"),
            (
                format!("{HEADER}\r\ncurrent 1 {key}\r\n"),
                "carriage returns",
            ),
            (
                format!("{HEADER}\ncurrent 1 {key} extra\n"),
                "after the key",
            ),
            (format!("{HEADER}\ncurrent 1 {key}"), "cut short"),
            (format!("{HEADER}\nprevious 1 {key}\n"), "`current`"),
            (format!("{HEADER}\ncurrent 1\n"), "no key"),
            (format!("{good}previous 1 {key}\n"), "at most three"),
            (
                format!("{HEADER}\ncurrent 1 {key}\ncurrent 1 {key}\n"),
                "`previous`",
            ),
        ];
        for (text, why) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
            assert!(!err.contains(&key), "no key in errors: {err}");
        }
    }

    #[test]
    fn create_makes_a_private_file_and_never_clobbers() {
        let dir = scratch("create");
        let path = dir.join("state").join("token.key");
        assert_eq!(read(&path).unwrap(), None);
        assert!(create(&path, &stored()).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(read(&path).unwrap(), Some(stored()));
        let other = Stored {
            previous: None,
            ..stored()
        };
        assert!(!create(&path, &other).unwrap(), "an existing file is kept");
        assert_eq!(read(&path).unwrap(), Some(stored()));
        replace(&path, &other).unwrap();
        assert_eq!(read(&path).unwrap(), Some(other));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("token.key")]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn loose_permissions_links_and_missing_directories_are_refused() {
        let dir = scratch("refused");
        let path = dir.join("token.key");
        std::fs::write(&path, render(&stored())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read(&path).unwrap_err();
        assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(&path).unwrap().is_some());

        let link = dir.join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read(&link).unwrap_err().contains("symbolic link"));

        let sub = dir.join("sub.key");
        std::fs::create_dir(&sub).unwrap();
        assert!(read(&sub).unwrap_err().contains("not a regular file"));

        let big = dir.join("big.key");
        std::fs::write(&big, "x".repeat(4096)).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(&big).unwrap_err().contains("wrong size"));

        if nix::unistd::geteuid().is_root() {
            // As root (the test command), a file owned by someone else is refused too.
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
            assert!(read(&path).unwrap_err().contains("owned by uid 65534"));
        }

        let deep = dir.join("big.key").join("state").join("token.key");
        assert!(create(&deep, &stored())
            .unwrap_err()
            .contains("cannot create its directory"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
