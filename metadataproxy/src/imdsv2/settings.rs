//! Where the IMDSv2 token key is kept (`TOKEN_KEY_FILE`) and how often it is replaced
//! (`TOKEN_KEY_ROTATION`).

use std::time::Duration;

/// `TOKEN_KEY_FILE`'s default for an agent running as root; the systemd unit's
/// `StateDirectory=metadataproxy` and the image's volume are its directory.
pub const DEFAULT_TOKEN_KEY_FILE: &str = "/var/lib/metadataproxy/token.key";

/// `TOKEN_KEY_FILE`'s default: [`DEFAULT_TOKEN_KEY_FILE`] as root, else the user's state
/// directory (`$XDG_STATE_HOME`, or `$HOME/.local/state`, as absolute paths), so that running
/// the agent as a user needs no setting; `None` when there is none.
pub fn default_token_key_file(
    root: bool,
    xdg_state_home: Option<&str>,
    home: Option<&str>,
) -> Option<std::path::PathBuf> {
    use std::path::{Path, PathBuf};
    if root {
        return Some(PathBuf::from(DEFAULT_TOKEN_KEY_FILE));
    }
    fn absolute(p: Option<&str>) -> Option<&Path> {
        p.map(Path::new).filter(|p| p.is_absolute())
    }
    let state = match absolute(xdg_state_home) {
        Some(dir) => dir.to_path_buf(),
        None => absolute(home)?.join(".local").join("state"),
    };
    Some(state.join("metadataproxy").join("token.key"))
}

/// Where the IMDSv2 token key is kept, and how often it is replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenKeyConfig {
    /// `TOKEN_KEY_FILE` (`None`: `none`, in memory only).
    pub file: Option<std::path::PathBuf>,
    /// `TOKEN_KEY_ROTATION` (`None`: `0`, never).
    pub rotation: Option<Duration>,
}

impl Default for TokenKeyConfig {
    fn default() -> Self {
        TokenKeyConfig {
            file: None,
            rotation: Some(Duration::from_secs(86_400)),
        }
    }
}
