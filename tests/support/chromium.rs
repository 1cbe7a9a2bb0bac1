//! Headless Chromium for tests of pages a person looks at (the simulation's timeline, the
//! EventStorming board): find the browser, a scratch directory, one run.
//!
//! Needs Debian's `chromium` (or `AETHER_CHROMIUM=<path>`); without it a test fails with the
//! install command — it never skips. Included with `#[path]` by the tests that use it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub const INSTALL_HINT: &str = "chromium not found: install it with `apt-get install -y chromium` \
     (Debian; .ci/run does), or set AETHER_CHROMIUM to a Chromium or Chrome binary";

/// The browser: `AETHER_CHROMIUM`, else `chromium` on `PATH`. Panics with the install hint.
pub fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("AETHER_CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "AETHER_CHROMIUM={} does not exist. {INSTALL_HINT}",
            path.display()
        );
        return path;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{INSTALL_HINT}"))
}

/// A fresh directory under the system's temporary directory, removed by [`Scratch::drop`].
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("aether-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a scratch directory");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs headless Chromium on `page` with `args` and a fresh profile in `profile`, with nothing
/// that reaches the network; returns (stdout, stderr) after asserting that it exited
/// successfully.
pub fn browse(profile: &Path, page: &Path, args: &[&str]) -> (String, String) {
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "chromium failed ({}):\n{stderr}",
        output.status
    );
    (stdout, stderr)
}
