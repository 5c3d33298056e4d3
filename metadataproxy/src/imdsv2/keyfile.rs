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
//!
//! Every failure is a [`KeyFileError`]; its message says what is wrong with the file ("it is
//! ..."), so the caller prefixes the variable and the path, and it never prints a key.

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

/// What is wrong with a token key file, or what could not be done with it. The message speaks
/// of the file as "it", without the variable, and never holds a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// A file operation failed.
    #[error("{}: {source}", describe(.op, .path))]
    Io {
        /// What was being done.
        op: Op,
        /// The file, or for [`Op::CreateDirectory`] and [`Op::WriteTemporary`] its directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is a symbolic link (it is opened with `O_NOFOLLOW`).
    #[error("it is a symbolic link; expected a regular file")]
    Symlink,
    /// The file is a directory, a device, a socket, ...
    #[error("it is not a regular file")]
    NotRegular,
    /// Someone else owns the file.
    #[error(
        "it is owned by uid {owner}, but the agent runs as uid {agent}: anyone who can replace \
         the key can forge tokens"
    )]
    OtherOwner {
        /// The file's owner.
        owner: u32,
        /// The agent's effective uid.
        agent: u32,
    },
    /// Others may read or change the file.
    #[error(
        "its permissions {mode:04o} let others read or change it; expected 0600 \
         (chmod 600 {})",
        .path.display()
    )]
    LooseMode {
        /// The permission bits.
        mode: u32,
        /// The file.
        path: PathBuf,
    },
    /// The file is larger than any key file.
    #[error("it is {len} bytes, the wrong size for a token key file (at most {MAX_FILE_LEN})")]
    TooLarge {
        /// Its size.
        len: u64,
    },
    /// The file grew past the limit while it was read.
    #[error("it is over {MAX_FILE_LEN} bytes, the wrong size for a token key file")]
    GrewTooLarge,
    /// The path has no directory to write the file in.
    #[error("it has no directory")]
    NoDirectory,
    /// The file was there a moment ago, and is gone (another agent removed it).
    #[error("it disappeared while the agent was creating it")]
    Vanished,
    /// The text is not a key file.
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// A file operation on the key file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Opening it for reading.
    Open,
    /// Reading its owner, mode and size.
    Inspect,
    /// Reading its text.
    Read,
    /// Creating its missing directory.
    CreateDirectory,
    /// Writing the temporary file beside it.
    WriteTemporary,
    /// Linking a first file into place.
    Create,
    /// Renaming a new file over it.
    Replace,
}

fn describe(op: &Op, path: &Path) -> String {
    match op {
        Op::Open => "cannot open it".into(),
        Op::Inspect => "cannot read its attributes".into(),
        Op::Read => "cannot read it".into(),
        Op::CreateDirectory => format!("cannot create its directory {}", path.display()),
        Op::WriteTemporary => format!("cannot write a file in {}", path.display()),
        Op::Create => "cannot create it".into(),
        Op::Replace => "cannot replace it".into(),
    }
}

fn io(op: Op, path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Why a text is not a token key file. Line numbers count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Lines end in `\r\n`.
    #[error("it has carriage returns: not a token key file")]
    CarriageReturn,
    /// The first line is not the header.
    #[error("it does not start with `{HEADER}`: not a token key file")]
    NoHeader,
    /// Only the header.
    #[error("it has no `current` line: the wrong size for a token key file")]
    NoCurrent,
    /// A line that is not the record expected there.
    #[error("line {line}: expected a `{name}` record")]
    UnexpectedRecord {
        /// The line.
        line: usize,
        /// The record expected.
        name: &'static str,
    },
    /// A record without a valid time.
    #[error("line {line}: expected a time in Unix seconds after `{name}`")]
    Time {
        /// The line.
        line: usize,
        /// The record.
        name: &'static str,
    },
    /// A record without a key.
    #[error("line {line}: no key after the time")]
    NoKey {
        /// The line.
        line: usize,
    },
    /// Text after the key.
    #[error("line {line}: unexpected text after the key")]
    TrailingText {
        /// The line.
        line: usize,
    },
    /// The key has characters outside base64url.
    #[error("line {line}: the key is not base64url")]
    NotBase64 {
        /// The line.
        line: usize,
    },
    /// The key's text does not decode (its length is wrong).
    #[error(
        "line {line}: the key is {chars} characters, the wrong size (expected {})",
        (KEY_LEN * 4).div_ceil(3)
    )]
    KeyText {
        /// The line.
        line: usize,
        /// How many characters it has.
        chars: usize,
    },
    /// The key decodes to the wrong number of bytes.
    #[error("line {line}: the key is {bytes} bytes, the wrong size (expected {KEY_LEN})")]
    KeyLength {
        /// The line.
        line: usize,
        /// How many bytes it has.
        bytes: usize,
    },
    /// More lines than a key file has.
    #[error("line {line}: unexpected; a token key file has at most three lines")]
    ExtraLine {
        /// The line.
        line: usize,
    },
    /// No newline at the end.
    #[error("its last line is cut short (no newline): the wrong size")]
    CutShort,
}

/// Reads the key file at `path`: `Ok(None)` when there is none.
pub fn read(path: &Path) -> Result<Option<Stored>, KeyFileError> {
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => return Err(KeyFileError::Symlink),
        Err(e) => return Err(io(Op::Open, path)(e)),
    };
    let meta = file.metadata().map_err(io(Op::Inspect, path))?;
    check_attributes(&meta, path)?;
    let mut text = String::new();
    std::io::Read::by_ref(&mut file)
        .take(MAX_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(io(Op::Read, path))?;
    if text.len() as u64 > MAX_FILE_LEN {
        return Err(KeyFileError::GrewTooLarge);
    }
    Ok(Some(parse(&text)?))
}

fn check_attributes(meta: &std::fs::Metadata, path: &Path) -> Result<(), KeyFileError> {
    if !meta.is_file() {
        return Err(KeyFileError::NotRegular);
    }
    let agent = nix::unistd::geteuid().as_raw();
    if meta.uid() != agent {
        return Err(KeyFileError::OtherOwner {
            owner: meta.uid(),
            agent,
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::LooseMode {
            mode,
            path: path.to_path_buf(),
        });
    }
    if meta.len() > MAX_FILE_LEN {
        return Err(KeyFileError::TooLarge { len: meta.len() });
    }
    Ok(())
}

/// Parses the file's text.
pub fn parse(text: &str) -> Result<Stored, FormatError> {
    if text.contains('\r') {
        return Err(FormatError::CarriageReturn);
    }
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    match lines.next() {
        Some((_, HEADER)) => {}
        _ => return Err(FormatError::NoHeader),
    }
    let (n, line) = lines.next().ok_or(FormatError::NoCurrent)?;
    let (created, current) = record(n, line, "current")?;
    let previous = match lines.next() {
        None => None,
        Some((n, line)) => {
            let (until, key) = record(n, line, "previous")?;
            Some((key, until))
        }
    };
    if let Some((line, _)) = lines.next() {
        return Err(FormatError::ExtraLine { line });
    }
    if !text.ends_with('\n') {
        return Err(FormatError::CutShort);
    }
    Ok(Stored {
        current,
        created,
        previous,
    })
}

fn record(line: usize, text: &str, name: &'static str) -> Result<(u64, KeyBytes), FormatError> {
    let mut fields = text.split(' ');
    if fields.next() != Some(name) {
        return Err(FormatError::UnexpectedRecord { line, name });
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
        .ok_or(FormatError::Time { line, name })?;
    let encoded = fields.next().ok_or(FormatError::NoKey { line })?;
    if fields.next().is_some() {
        return Err(FormatError::TrailingText { line });
    }
    if !encoded
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(FormatError::NotBase64 { line });
    }
    // The decoder's own error is left out: it can quote a character of the key.
    let raw = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| FormatError::KeyText {
            line,
            chars: encoded.len(),
        })?;
    let key: [u8; KEY_LEN] = raw
        .as_slice()
        .try_into()
        .map_err(|_| FormatError::KeyLength {
            line,
            bytes: raw.len(),
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
pub fn create(path: &Path, stored: &Stored) -> Result<bool, KeyFileError> {
    let dir = directory(path)?;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)
            .map_err(io(Op::CreateDirectory, &dir))?;
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
        Err(e) => Err(io(Op::Create, path)(e)),
    }
}

/// Replaces the key file at `path` with `stored`, whole (after a rotation).
pub fn replace(path: &Path, stored: &Stored) -> Result<(), KeyFileError> {
    let dir = directory(path)?;
    let tmp = write_temporary(&dir, path, stored)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(Op::Replace, path)(e));
    }
    sync_directory(&dir);
    Ok(())
}

fn directory(path: &Path) -> Result<PathBuf, KeyFileError> {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => Ok(d.to_path_buf()),
        _ => Err(KeyFileError::NoDirectory),
    }
}

/// A new file (mode 0600) beside `path` holding `stored`, flushed to disk.
fn write_temporary(dir: &Path, path: &Path, stored: &Stored) -> Result<PathBuf, KeyFileError> {
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
        .map_err(io(Op::WriteTemporary, dir))?;
    let written = file
        .write_all(render(stored).as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(Op::WriteTemporary, dir)(e));
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
            let err = parse(&text).unwrap_err().to_string();
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
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(&path).unwrap().is_some());

        let link = dir.join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(read(&link), Err(KeyFileError::Symlink)));

        let sub = dir.join("sub.key");
        std::fs::create_dir(&sub).unwrap();
        assert!(matches!(read(&sub), Err(KeyFileError::NotRegular)));

        let big = dir.join("big.key");
        std::fs::write(&big, "x".repeat(4096)).unwrap();
        std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read(&big).unwrap_err().to_string().contains("wrong size"));

        if nix::unistd::geteuid().is_root() {
            // As root (the test command), a file owned by someone else is refused too.
            std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
            assert!(read(&path)
                .unwrap_err()
                .to_string()
                .contains("owned by uid 65534"));
        }

        let deep = dir.join("big.key").join("state").join("token.key");
        let err = create(&deep, &stored()).unwrap_err();
        assert!(
            err.to_string().contains("cannot create its directory"),
            "{err}"
        );
        assert!(
            matches!(&err, KeyFileError::Io { op: Op::CreateDirectory, source, .. }
                if std::error::Error::source(&err).is_some() && source.raw_os_error().is_some()),
            "the OS error is kept as the source: {err:?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
