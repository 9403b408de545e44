//! A test's temporary folder, removed with everything in it when the test ends (passed or not).

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Numbers the folders one process makes, so two tests with the same label never share one.
static MADE: AtomicUsize = AtomicUsize::new(0);

/// An empty folder `zoo-<label>-<pid>-<n>` in the system's temporary folder (emptied first if a
/// killed test left it behind), removed when dropped, so repeated test runs do not fill the
/// disk. Derefs to its path.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Makes the folder; panics (this is test support) when the temporary folder is not writable.
    pub fn new(label: &str) -> Self {
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let name = format!("zoo-{label}-{}-{n}", std::process::id());
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot make {}: {e}", path.display()));
        Self { path }
    }

    /// The folder's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Deref for ScratchDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for ScratchDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::ScratchDir;

    #[test]
    fn the_folder_is_empty_at_first_and_gone_after_the_drop() {
        let kept;
        {
            let dir = ScratchDir::new("scratch-self-test");
            assert!(dir.is_dir());
            assert_eq!(std::fs::read_dir(&*dir).unwrap().count(), 0);
            std::fs::create_dir_all(dir.join("a/b")).unwrap();
            std::fs::write(dir.join("a/b/c.bin"), [1u8; 16]).unwrap();
            kept = dir.path().to_path_buf();
        }
        assert!(!kept.exists(), "{} is still there", kept.display());
    }
}
