//! Secrets (the admin key, Redis and Sentinel passwords): given on the command line or in the
//! environment, or read from a file, so that they sit in neither the environment nor the
//! process list.
//!
//! A file is read at start-up (a missing, unreadable, empty or oversized file stops start-up,
//! naming it) and read again, at most once per [`RECHECK_INTERVAL`], whenever the secret is
//! used: a new admin key applies to the next admin call, a new Redis password to the next
//! connection made. Reading at use rather than on a timer keeps the secret off the hot path (a
//! Redis connection is made rarely, an admin call is rare) and needs no background task. The
//! file is read through symlinks, so a Kubernetes Secret volume's `..data` swap is seen like an
//! edit. A file that later cannot be used is logged, naming it, and the last good value serves
//! on. Values are never logged, nor printed by `Debug`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;

/// How often, at most, a secret file is read again: a rotated secret applies within a second,
/// and a burst of admin calls reads the file once.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Largest secret file accepted: far above any key or password, and a bound on what a wrong
/// path (a log file, a device) makes Floodgate read.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Why a secret file cannot be used; every case names the file.
#[derive(Debug, Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("reading the secret file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file's contents cannot be a secret.
    #[error("the secret file {}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A secret value shared by its users; a file-backed one follows its file.
#[derive(Clone)]
pub struct Secret(Arc<Inner>);

struct Inner {
    /// The file it is read from; `None` for a value given directly.
    path: Option<PathBuf>,
    state: Mutex<State>,
}

struct State {
    value: Arc<str>,
    /// Bumped whenever the value changes, so users can tell cheaply that it did.
    generation: u64,
    checked: Instant,
    /// The last problem logged, so that a bad file is logged once, not at every use.
    problem: Option<String>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the value.
        match &self.0.path {
            Some(path) => write!(f, "Secret(file {})", path.display()),
            None => f.write_str("Secret(given)"),
        }
    }
}

/// Two secrets are equal when they come from the same file, or were given the same value:
/// what comparing settings means.
impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        match (self.path(), other.path()) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self.current() == other.current(),
            _ => false,
        }
    }
}

impl Eq for Secret {}

impl Secret {
    /// A secret given directly (a flag, a variable); it never changes.
    pub fn given(value: impl Into<String>) -> Secret {
        Secret::with(None, Arc::from(value.into()))
    }

    /// The secret in the file at `path`, read now; an error names the file.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Secret, SecretError> {
        let path = path.into();
        let value = read(&path)?;
        Ok(Secret::with(Some(path), value))
    }

    fn with(path: Option<PathBuf>, value: Arc<str>) -> Secret {
        Secret(Arc::new(Inner {
            path,
            state: Mutex::new(State {
                value,
                generation: 0,
                checked: Instant::now(),
                problem: None,
            }),
        }))
    }

    /// The file it is read from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.0.path.as_deref()
    }

    /// The current value, the file read again first when it was last read over
    /// [`RECHECK_INTERVAL`] ago.
    pub fn current(&self) -> Arc<str> {
        self.current_with_generation().0
    }

    /// The current value and its generation (bumped at every change): a user that built
    /// something from the value rebuilds it when the generation moved.
    pub fn current_with_generation(&self) -> (Arc<str>, u64) {
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.0.path
            && state.checked.elapsed() >= RECHECK_INTERVAL
        {
            // A few hundred bytes from a local file, under a lock no `.await` holds.
            refresh(path, &mut state);
        }
        (state.value.clone(), state.generation)
    }
}

/// Reads `path` again into `state`: a changed value replaces the old one; a problem is logged
/// (once while it lasts) and the old value serves on.
fn refresh(path: &Path, state: &mut State) {
    state.checked = Instant::now();
    match read(path) {
        Ok(value) => {
            state.problem = None;
            if value != state.value {
                tracing::info!(file = %path.display(), "secret file changed: its new value is in use");
                state.value = value;
                state.generation += 1;
            }
        }
        Err(e) => {
            let problem = e.to_string();
            if state.problem.as_deref() != Some(problem.as_str()) {
                tracing::error!(error = %problem, "secret file not reloaded; the previous value serves on");
                state.problem = Some(problem);
            }
        }
    }
}

/// The secret in `path`: its contents without trailing line breaks (as `echo` and editors
/// leave them); empty, over [`MAX_SECRET_BYTES`] or not UTF-8 is refused.
fn read(path: &Path) -> Result<Arc<str>, SecretError> {
    let failed = |source| SecretError::Read {
        path: path.to_owned(),
        source,
    };
    let invalid = |reason| SecretError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(failed)?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(failed)?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(invalid("larger than 64 KiB: not a key or password"));
    }
    let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text"))?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(invalid("empty"));
    }
    Ok(Arc::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("floodgate-secrets-unit-")
            .tempdir()
            .unwrap()
    }

    /// Makes the next use read the file again.
    fn expire(secret: &Secret) {
        let mut state = secret.0.state.lock().unwrap();
        state.checked = Instant::now() - RECHECK_INTERVAL;
    }

    #[test]
    fn a_file_is_read_without_its_line_break_and_followed() {
        let dir = dir();
        let path = dir.path().join("key");
        std::fs::write(&path, "first\n").unwrap();
        let secret = Secret::from_file(&path).unwrap();
        assert_eq!(&*secret.current(), "first");
        assert_eq!(secret.current_with_generation().1, 0);

        std::fs::write(&path, "second\r\n").unwrap();
        // Not read again within the interval...
        assert_eq!(&*secret.current(), "first");
        // ... but after it.
        expire(&secret);
        assert_eq!(secret.current_with_generation(), (Arc::from("second"), 1));
        expire(&secret);
        assert_eq!(
            secret.current_with_generation().1,
            1,
            "unchanged: same generation"
        );

        // A file that cannot be used keeps the last good value.
        for bad in ["", "\n"] {
            std::fs::write(&path, bad).unwrap();
            expire(&secret);
            assert_eq!(&*secret.current(), "second");
        }
        std::fs::remove_file(&path).unwrap();
        expire(&secret);
        assert_eq!(secret.current_with_generation(), (Arc::from("second"), 1));
    }

    #[test]
    fn unusable_files_are_refused_naming_them() {
        let dir = dir();
        let file = |name: &str, contents: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        };
        let cases = [
            (file("empty", b""), "empty"),
            (file("newline", b"\n"), "empty"),
            (file("binary", &[0xff, 0xfe]), "not UTF-8"),
            (
                file("huge", &vec![b'a'; MAX_SECRET_BYTES as usize + 1]),
                "larger than 64 KiB",
            ),
            (dir.path().join("missing"), "reading the secret file"),
        ];
        for (path, want) in cases {
            let error = Secret::from_file(&path).unwrap_err().to_string();
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(error.contains(want), "{error}: want {want:?}");
        }
        let ok = file("max", &vec![b'a'; MAX_SECRET_BYTES as usize]);
        assert_eq!(Secret::from_file(ok).unwrap().current().len(), 64 * 1024);
    }

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::given("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(given)");
        assert_eq!(&*secret.current(), "hunter2");
    }
}
