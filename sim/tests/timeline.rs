//! A failing seed's timeline, checked in a real browser: a planted bug's failing seed writes
//! its page and trace, headless Chromium loads the page without a script error, the operations
//! the violations name are drawn highlighted, and a screenshot comes out.
//!
//! Needs Debian's `chromium` (or `AETHER_CHROMIUM=<path>`); without it the test fails with the
//! install command — it never skips.

#![cfg(feature = "sim")]

use std::time::Duration;

use aether_sim::runner::parse_planted;
use aether_sim::timeline::layout;
use aether_sim::{RunOptions, Scenario, run};

#[path = "../../tests/support/chromium.rs"]
mod chromium;
use chromium::{Scratch, browse};

/// Drives the page with synthetic events and records, in `data-drive` on `<body>`, each step
/// whose effect it saw: the wheel zooms in (the x scale grows), a drag pans (the translation
/// moves), a double-click shows the whole run again, hovering an op shows its details, and a
/// violation's op link zooms to that op and marks it.
const DRIVE: &str = r##"
(function () {
  var chart = document.getElementById("chart");
  var scaled = chart.querySelector("svg g[transform]");
  var log = [];
  function transform() { return scaled.getAttribute("transform"); }
  function scale() { return parseFloat(transform().split("scale(")[1]); }
  function shift() { return parseFloat(transform().split("translate(")[1]); }
  var box = chart.getBoundingClientRect();
  var at = { clientX: box.left + box.width / 2, clientY: box.top + 40, bubbles: true, cancelable: true };
  var initial = transform(), k0 = scale();
  chart.dispatchEvent(new WheelEvent("wheel", Object.assign({ deltaY: -600 }, at)));
  if (scale() > k0 * 2) { log.push("zoomed"); }
  var x0 = shift();
  chart.dispatchEvent(new MouseEvent("mousedown", at));
  window.dispatchEvent(new MouseEvent("mousemove", Object.assign({}, at, { clientX: at.clientX - 200 })));
  window.dispatchEvent(new MouseEvent("mouseup", at));
  if (shift() < x0) { log.push("panned"); }
  chart.dispatchEvent(new MouseEvent("dblclick", at));
  if (transform() === initial) { log.push("reset"); }
  var op = chart.querySelector("rect.op.hl");
  var tip = document.getElementById("tip");
  op.dispatchEvent(new MouseEvent("mousemove", Object.assign({}, at, { bubbles: true })));
  if (!tip.hidden && tip.textContent.indexOf("#") === 0) { log.push("tip"); }
  var link = document.querySelector("#violations a[data-op]");
  link.dispatchEvent(new MouseEvent("click", { bubbles: true, cancelable: true }));
  var focused = chart.querySelector("rect.op.focus");
  if (focused && focused.getAttribute("data-i") === link.getAttribute("data-op") && scale() > k0) {
    log.push("focused");
  }
  document.body.setAttribute("data-drive", log.join(" "));
  document.body.setAttribute("data-drive-log", initial + " | " + transform());
})();
"##;

/// The value of attribute `name` on the first element of `dom` that has it.
fn attribute<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    let start = dom.find(&format!(" {name}=\""))? + name.len() + 3;
    dom[start..].split('"').next()
}

#[test]
fn a_failing_seed_writes_a_timeline_that_chromium_draws_with_the_violations_highlighted() {
    let scratch = Scratch::new("timeline");
    let artifacts = scratch.0.join("artifacts");
    // Seed 0 of a short store run with appends that skip the server's compare-and-set: two
    // writers win one version (invariant 4), named as `ops [a, b]`.
    let scenario = Scenario::store().with_safety(Duration::from_secs(5));
    let options = RunOptions {
        planted: parse_planted("append_without_expected_sequence").expect("a planted bug"),
        artifacts: Some(artifacts.clone()),
        ..RunOptions::default()
    };
    let report = run(&scenario, 0, &options);
    assert!(!report.passed(), "the planted bug is caught on seed 0");
    let files = report
        .artifacts
        .clone()
        .expect("a failing seed writes its files")
        .expect("written");
    assert_eq!(files.timeline, artifacts.join("store-0.html"));
    assert_eq!(files.trace, artifacts.join("store-0.trace.txt"));
    let printed = report.to_string();
    assert!(
        printed.contains(&format!("timeline: {}", files.timeline.display())),
        "the failure report names the timeline:\n{printed}"
    );
    let trace = std::fs::read_to_string(&files.trace).expect("the trace file");
    assert!(
        trace.contains(&report.replay_command()),
        "the trace says how to replay"
    );
    assert!(
        trace.contains(" invoke #0 "),
        "the trace holds every operation"
    );

    // The page is self-contained: nothing is loaded from anywhere.
    let html = std::fs::read_to_string(&files.timeline).expect("the timeline file");
    for external in [
        "src=\"http",
        "href=\"http",
        "url(http",
        "@import",
        "fetch(",
        "XMLHttpRequest",
    ] {
        assert!(!html.contains(external), "the page loads {external:?}");
    }
    // What should be highlighted: the ops the violations name, found again from the replay.
    let traced = run(
        &scenario,
        0,
        &RunOptions {
            keep_trace: true,
            artifacts: None,
            ..options.clone()
        },
    );
    let ops = traced.ops.as_ref().expect("ops kept with the trace");
    let expected = layout::highlighted(ops, &traced.violations);
    assert!(
        expected.len() >= 2,
        "two appends won one version: {:?}",
        traced.violations
    );

    // Drawn by a real browser: the script ran to the end without an error.
    let profile = scratch.0.join("profile");
    let (dom, _) = browse(&profile, &files.timeline, &["--dump-dom"]);
    assert_eq!(
        attribute(&dom, "data-errors"),
        Some("0"),
        "script errors: {:?}",
        attribute(&dom, "data-last-error")
    );
    assert_eq!(
        attribute(&dom, "data-ready"),
        Some("1"),
        "the script finished drawing"
    );
    assert_eq!(
        attribute(&dom, "data-ops"),
        Some(ops.len().to_string().as_str())
    );
    assert_eq!(
        attribute(&dom, "data-highlighted"),
        Some(expected.len().to_string().as_str())
    );
    for index in &expected {
        assert!(
            dom.contains(&format!("data-i=\"{index}\""))
                && dom.contains(&format!("data-op=\"{index}\"")),
            "op {index} is drawn and linked from its violation"
        );
    }
    // One marker line per highlighted op (the script's own source holds the pattern too, but
    // never followed by a number).
    let marks = dom
        .match_indices("<line class=\"hl-mark\" x1=\"")
        .filter(|(at, m)| dom[at + m.len()..].starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(marks, expected.len());

    // Zoom, pan, reset, hover and a violation's link, driven by synthetic events in a copy of
    // the page; the script under test records what it saw.
    let driven = scratch.0.join("driven.html");
    std::fs::write(
        &driven,
        html.replace("</body>", &format!("<script>{DRIVE}</script>\n</body>")),
    )
    .expect("write the driven page");
    let (dom, _) = browse(&profile, &driven, &["--dump-dom"]);
    assert_eq!(
        attribute(&dom, "data-errors"),
        Some("0"),
        "script errors: {:?}",
        attribute(&dom, "data-last-error")
    );
    assert_eq!(
        attribute(&dom, "data-drive"),
        Some("zoomed panned reset tip focused"),
        "{:?}",
        attribute(&dom, "data-drive-log")
    );

    // And photographed; the console stayed clean.
    let png = scratch.0.join("timeline.png");
    let (_, log) = browse(
        &profile,
        &files.timeline,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1400,900",
            "--enable-logging=stderr",
            "--v=0",
        ],
    );
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    let image = std::fs::read(&png).expect("the screenshot");
    assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    assert!(
        image.len() > 20_000,
        "a picture, not a blank page: {} bytes",
        image.len()
    );
    if let Some(keep) = std::env::var_os("AETHER_TIMELINE_SCREENSHOT") {
        std::fs::copy(&png, keep).expect("keep the screenshot");
    }
}
