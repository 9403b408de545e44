//! A run folder's lock: one process at a time, the owner named in the file by its pid and
//! start time, and a lock whose owner is gone (exited, a zombie, or its pid reused) taken over.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The lock file's name inside a run folder.
pub const LOCK_FILE: &str = "run.lock";

/// A held run-folder lock; dropping it removes the file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

/// A process as `/proc/<pid>/stat` shows it: its state letter and its start time (clock
/// ticks after boot), which together with the pid tell it from a later process of that pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStat {
    pub state: char,
    pub start_time: u64,
}

/// `pid`'s state and start time, or `None` when no such process exists (or on a system
/// without `/proc`).
pub fn process_stat(pid: u32) -> Option<ProcessStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses a `/proc/<pid>/stat` line: the command name (field 2) may hold spaces and
/// parentheses, so the fields are counted from its last `)`.
fn parse_stat(text: &str) -> Option<ProcessStat> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    Some(ProcessStat {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The owner a lock file names: `pid` and, from locks written by this version on, the
/// owner's start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    pid: u32,
    start_time: Option<u64>,
}

impl Owner {
    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split_whitespace();
        let pid = parts.next()?.parse().ok()?;
        let start_time = match parts.next() {
            Some(t) => Some(t.parse().ok()?),
            None => None,
        };
        Some(Self { pid, start_time })
    }

    /// Whether the owner still runs: its pid exists, is no zombie (`Z`: exited, not yet reaped
    /// by its parent, as under a PID 1 that never reaps) nor dead (`X`), and started when the
    /// lock says. Where `/proc` is missing (not Linux) every owner counts as alive, so that no
    /// lock is ever taken from a running process.
    fn alive(&self) -> bool {
        if !cfg!(target_os = "linux") {
            return true;
        }
        match process_stat(self.pid) {
            None => false,
            Some(stat) if matches!(stat.state, 'Z' | 'X') => false,
            Some(stat) => self.start_time.is_none_or(|t| t == stat.start_time),
        }
    }

    /// Why the owner counts as gone, for the notice.
    fn gone_because(&self) -> String {
        match process_stat(self.pid) {
            None => format!("process {} no longer exists", self.pid),
            Some(s) if matches!(s.state, 'Z' | 'X') => {
                format!("process {} has exited (a defunct process)", self.pid)
            }
            Some(_) => format!(
                "process {} is another process than the lock's owner (it started later)",
                self.pid
            ),
        }
    }
}

impl RunLock {
    /// Takes `run_dir/run.lock`, or fails naming the process that holds it. A lock whose
    /// owner has gone is stale: it is removed (with a notice saying why) and taken.
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(LOCK_FILE);
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    let me = std::process::id();
                    let start =
                        process_stat(me).map_or(String::new(), |s| format!(" {}", s.start_time));
                    writeln!(file, "{me}{start}")
                        .and_then(|_| file.sync_all())
                        .with_context(|| format!("writing {}", path.display()))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    Self::check_stale(run_dir, &path)?;
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
            }
        }
        bail!("could not take the lock {}", path.display())
    }

    /// Fails when the lock at `path` has a live owner (or is being written); removes it when
    /// its owner is gone.
    fn check_stale(run_dir: &Path, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let age = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let owner = Owner::parse(&text);
        match owner {
            Some(o) => {
                if o.alive() {
                    bail!(
                        "{} is in use by process {} (its {LOCK_FILE}): two runs in one folder \
                         would overwrite each other's checkpoints; wait for it or stop it",
                        run_dir.display(),
                        o.pid
                    )
                }
                eprintln!(
                    "removing the stale lock {} ({})",
                    path.display(),
                    o.gone_because()
                );
            }
            None if age < 10.0 => bail!(
                "{} is being taken by another process ({} has no owner written yet)",
                run_dir.display(),
                path.display()
            ),
            None => eprintln!(
                "removing the stale lock {} (no owner in it: {:?})",
                path.display(),
                text.trim()
            ),
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> zoo_core::testing::ScratchDir {
        zoo_core::testing::scratch_dir(&format!("lock-{name}"))
    }

    #[test]
    fn stat_lines_parse_with_odd_command_names() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 50";
        assert_eq!(
            parse_stat(line),
            Some(ProcessStat {
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        let me = process_stat(std::process::id()).unwrap();
        assert!(matches!(me.state, 'R' | 'S'), "{me:?}");
    }

    #[test]
    fn a_live_owner_keeps_the_lock_and_a_gone_one_loses_it() {
        let dir = scratch("owners");
        let lock = RunLock::acquire(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
        let me = process_stat(std::process::id()).unwrap();
        assert_eq!(
            text.trim(),
            format!("{} {}", std::process::id(), me.start_time)
        );
        let err = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&format!("in use by process {}", std::process::id())),
            "{err}"
        );
        drop(lock);
        // This pid, but started at another time: a reused pid, not the owner.
        let reused = format!("{} {}\n", std::process::id(), me.start_time + 1);
        std::fs::write(dir.join(LOCK_FILE), reused).unwrap();
        drop(RunLock::acquire(&dir).unwrap());
        // A lock of the old format (pid only) with a live pid is still honoured.
        std::fs::write(dir.join(LOCK_FILE), format!("{}\n", std::process::id())).unwrap();
        assert!(RunLock::acquire(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_zombie_owner_is_a_dead_owner() {
        let dir = scratch("zombie");
        // A child that exits and is not reaped until we wait: a zombie meanwhile.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while process_stat(pid).is_some_and(|s| s.state != 'Z') {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never exited"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let start = process_stat(pid).unwrap().start_time;
        std::fs::write(dir.join(LOCK_FILE), format!("{pid} {start}\n")).unwrap();
        let lock = RunLock::acquire(&dir);
        child.wait().unwrap();
        assert!(lock.is_ok(), "{:?}", lock.err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
