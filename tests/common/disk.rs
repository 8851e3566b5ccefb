//! A small disk for the disk-full tests: a tmpfs of a chosen size mounted on a temporary
//! directory, unmounted on drop.
//!
//! Mounting needs root. CI runs as root, so under `CI=true` a failed mount is a test failure,
//! never a silent skip; elsewhere (a developer's machine, not root) the test says it skipped.

use std::path::Path;
use std::process::{Command, Stdio};

/// A tmpfs of a chosen size mounted on a fresh temporary directory, unmounted on drop.
pub struct SmallDisk {
    // Dropped after `Drop::drop` has unmounted it, so the directory is empty by then.
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (`mount -o size=` syntax: "128k", "2m").
    ///
    /// `None` when this process cannot mount (not root), after saying the test is skipped;
    /// under `CI=true` that panics instead (CI must run the disk-full tests).
    pub fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .status();
        if status.as_ref().is_ok_and(|s| s.success()) {
            return Some(SmallDisk { dir });
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run the disk-full tests as root: mounting a tmpfs failed ({status:?})"
        );
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        None
    }

    /// The mounted directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Changes the file system's size to `size`; the files on it stay (gives a full disk room
    /// again).
    pub fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .stdin(Stdio::null())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "remount to size={size} failed: {status:?}"
        );
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
