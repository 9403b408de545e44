//! Files written whole or not at all: every result zoo writes (checkpoints, metrics, figures,
//! reports, configs, docs) goes through [`write_atomic`].

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Result;

/// Writes `bytes` to `path` through `path.tmp`, synced, then renamed over `path`, and syncs the
/// folder so that the rename survives a crash. A reader sees the old file or the new one, never
/// a part; a kill leaves at most the `.tmp` file, which the next write replaces.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |what: &str, e: std::io::Error| {
        candle_core::Error::Msg(format!("{}: {what}: {e}", path.display()))
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file =
        std::fs::File::create(&tmp).map_err(|e| err("cannot create temporary file", e))?;
    file.write_all(bytes).map_err(|e| err("cannot write", e))?;
    file.sync_all().map_err(|e| err("cannot sync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| err("cannot rename into place", e))?;
    // The rename is durable once the folder's entry is: best effort (not every file system
    // lets a folder be opened for syncing).
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = std::fs::File::open(folder) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Copies `from` to `to` through [`write_atomic`]: `to` is the old file or the whole copy.
pub fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let bytes = std::fs::read(from)
        .map_err(|e| candle_core::Error::Msg(format!("{}: cannot read: {e}", from.display())))?;
    write_atomic(to, &bytes)
}

/// Whether `name` is one plain path component: not empty, no `/` or `\\`, no leading dot (so
/// neither `.` nor `..`), no control character. A name that becomes a folder under a root a
/// run writes to or reads from (a matrix's runs, an image-folder dataset) must be one.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = crate::testing::scratch_dir("fs");
        let path = dir.join("a.txt");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        assert!(!dir.join("a.txt.tmp").exists());
        copy_atomic(&path, &dir.join("b.txt")).unwrap();
        assert_eq!(std::fs::read(dir.join("b.txt")).unwrap(), b"second, longer");
        let err = copy_atomic(&dir.join("none.txt"), &dir.join("c.txt")).unwrap_err();
        assert!(err.to_string().contains("none.txt: cannot read"), "{err}");
        // A folder that does not exist: an error naming the file.
        let err = write_atomic(&dir.join("missing/b.txt"), b"x").unwrap_err();
        assert!(err.to_string().contains("missing/b.txt"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
