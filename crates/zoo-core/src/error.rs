//! [`ReadError`]: why data or a checkpoint could not be read, typed, with the I/O error kept as
//! its source, so that a caller tells "not there" from "there but unreadable" without parsing
//! a message or decoding a dataset.

use std::path::{Path, PathBuf};

/// Why a file, a dataset or a checkpoint could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// Nothing at `path`; `message` says what was expected there.
    NotFound {
        path: PathBuf,
        message: String,
        source: Option<std::io::Error>,
    },
    /// `path` is there but could not be read (permissions, a device error, ...).
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ReadError {
    /// `path` is missing; `message` is the whole error text.
    pub fn not_found(path: &Path, message: String) -> Self {
        Self::NotFound {
            path: path.to_path_buf(),
            message,
            source: None,
        }
    }

    /// The error of reading `path`, by the I/O error's kind.
    pub fn from_io(path: &Path, source: std::io::Error) -> Self {
        match source.kind() {
            std::io::ErrorKind::NotFound => Self::NotFound {
                path: path.to_path_buf(),
                message: format!("{}: cannot read: {source}", path.display()),
                source: Some(source),
            },
            _ => Self::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    }

    /// Whether the thing was simply not there.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// The path it is about.
    pub fn path(&self) -> &Path {
        match self {
            Self::NotFound { path, .. } | Self::Io { path, .. } => path,
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound { message, .. } => f.write_str(message),
            Self::Io { path, source } => write!(f, "{}: cannot read: {source}", path.display()),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::NotFound { source, .. } => source.as_ref().map(|e| e as _),
            Self::Io { source, .. } => Some(source),
        }
    }
}

/// Into candle's error with the same message (for the `candle_core::Result` loaders).
impl From<ReadError> for candle_core::Error {
    fn from(e: ReadError) -> Self {
        candle_core::Error::Msg(e.to_string())
    }
}

/// Reads a whole file; a missing file is [`ReadError::NotFound`].
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, ReadError> {
    std::fs::read(path).map_err(|e| ReadError::from_io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_not_found_and_keeps_its_io_error() {
        let missing = std::env::temp_dir().join("zoo-no-such-file-anywhere.bin");
        let err = read_bytes(&missing).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert_eq!(err.path(), missing);
        let source = std::error::Error::source(&err).unwrap();
        let io = source.downcast_ref::<std::io::Error>().unwrap();
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        // A folder is there but cannot be read as a file: not "not found".
        let err = read_bytes(&std::env::temp_dir()).unwrap_err();
        assert!(!err.is_not_found(), "{err}");
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
