//! What a failing seed leaves behind for a human: its timeline (a self-contained HTML page, see
//! [`crate::timeline`]) and its full text trace, side by side in one directory, named
//! `<scenario>-<seed>.html` and `<scenario>-<seed>.trace.txt`.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use crate::runner::{RunOptions, RunReport, planted_names};
use crate::scenarios::Scenario;
use crate::timeline::{self, TimelineInput};

/// The environment variable naming the directory failing seeds write their files to.
pub const ARTIFACTS_ENV: &str = "AETHER_SIM_ARTIFACTS";

/// The files a run wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifacts {
    /// The timeline page.
    pub timeline: PathBuf,
    /// The full trace.
    pub trace: PathBuf,
}

/// The directory in [`ARTIFACTS_ENV`], if set and not empty.
pub fn dir_from_env() -> Option<PathBuf> {
    std::env::var_os(ARTIFACTS_ENV)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
}

impl RunReport {
    /// The run's heading: scenario, seed, planted bugs, verdict.
    pub fn title(&self) -> String {
        let planted = planted_names(&self.planted);
        let planted = if planted.is_empty() {
            String::new()
        } else {
            format!(" · planted {}", planted.join(", "))
        };
        let verdict = if self.passed() {
            "passed".to_owned()
        } else {
            match self.violations.len() {
                1 => "1 violation".to_owned(),
                n => format!("{n} violations"),
            }
        };
        format!(
            "{} seed {}{planted} · {} s · {verdict}",
            self.scenario,
            self.seed,
            self.simulated.as_secs()
        )
    }

    /// The run's timeline page, if its operations were kept ([`RunOptions::keep_trace`]).
    pub fn timeline_html(&self) -> Option<String> {
        let ops = self.ops.as_ref()?;
        Some(timeline::render(&TimelineInput {
            title: &self.title(),
            ops,
            faults: &self.faults,
            nodes: &self.nodes,
            violations: &self.violations,
            end: self.simulated,
        }))
    }

    /// Writes the timeline and the full trace into `dir` (created if missing).
    ///
    /// # Errors
    /// When the trace was not kept, or a file cannot be written.
    pub fn write_artifacts(&self, dir: &Path) -> io::Result<Artifacts> {
        let (Some(html), Some(trace)) = (self.timeline_html(), self.trace.as_ref()) else {
            return Err(io::Error::other(
                "the run kept no trace (RunOptions::keep_trace)",
            ));
        };
        std::fs::create_dir_all(dir)?;
        let stem = format!("{}-{}", self.scenario, self.seed);
        let written = Artifacts {
            timeline: dir.join(format!("{stem}.html")),
            trace: dir.join(format!("{stem}.trace.txt")),
        };
        let mut text = String::with_capacity(trace.iter().map(|l| l.len() + 1).sum::<usize>());
        let _ = writeln!(text, "# {}", self.title());
        let _ = writeln!(text, "# replay: {}", self.replay_command());
        for violation in &self.violations {
            let _ = writeln!(text, "# violated: {violation}");
        }
        for line in trace {
            text.push_str(line);
            text.push('\n');
        }
        text.push('\n');
        text.push_str(&self.summary());
        std::fs::write(&written.timeline, html)?;
        std::fs::write(&written.trace, text)?;
        Ok(written)
    }
}

/// Writes the files of `report`, a failed run of `scenario`, into `dir`: from the report when
/// it kept its trace, else from a replay of the seed with the trace kept. A replay whose trace
/// differs from the run's (the run was not a pure function of its seed) is said so in the
/// trace file.
///
/// # Errors
/// What went wrong, as text for the failure report.
pub fn write_for(
    scenario: &Scenario,
    options: &RunOptions,
    report: &RunReport,
    dir: &Path,
) -> Result<Artifacts, String> {
    let written = if report.trace.is_some() && report.ops.is_some() {
        report.write_artifacts(dir)
    } else {
        let traced = RunOptions {
            keep_trace: true,
            artifacts: None,
            ..options.clone()
        };
        let replay = crate::runner::run(scenario, report.seed, &traced);
        let written = replay.write_artifacts(dir);
        if let Ok(files) = &written
            && replay.trace_hash != report.trace_hash
        {
            let note = format!(
                "\n# NOT DETERMINISTIC: this replay's trace hash is {:016x}, the failing run's was {:016x}\n",
                replay.trace_hash, report.trace_hash
            );
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(&files.trace)
                .map_err(|e| e.to_string())?;
            io::Write::write_all(&mut file, note.as_bytes()).map_err(|e| e.to_string())?;
        }
        written
    };
    written.map_err(|e| format!("{}: {e}", dir.display()))
}
