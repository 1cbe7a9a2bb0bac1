//! The order-flow board's HTML page, checked in a real browser: headless Chromium photographs
//! it, and its DOM holds one sticky note per element and one arrow per link, with a clean
//! console.
//!
//! Needs Debian's `chromium` (or `AETHER_CHROMIUM=<path>`); without it the test fails with the
//! install command — it never skips. `AETHER_MODEL_SCREENSHOT=<png>` keeps the screenshot (how
//! `docs/model-order-flow.png` is made).

use std::path::{Path, PathBuf};
use std::process::Command;

use aether::model::{Aggregate, Kind, Model};

const INSTALL_HINT: &str = "chromium not found: install it with `apt-get install -y chromium` \
     (Debian; .ci/run does), or set AETHER_CHROMIUM to a Chromium or Chrome binary";

/// The board of `examples/order_flow_model.rs`.
fn order_flow() -> Model {
    Model::builder("order flow")
        .actor("customer", ["PlaceOrder"])
        .element(
            Aggregate::new("Order")
                .handles(["PlaceOrder", "MarkPaid"])
                .emits(["OrderPlaced", "OrderPaid"])
                .description("one customer order, from basket to paid"),
        )
        .aggregate("Payment", ["ChargeCard"], ["CardCharged", "ChargeDeclined"])
        .policy("charge on order", ["OrderPlaced"], ["ChargeCard"])
        .policy("mark paid when charged", ["CardCharged"], ["MarkPaid"])
        .read_model("orders list", ["OrderPlaced", "OrderPaid"])
        .external("card gateway", [], ["CardCharged"])
        .build()
        .expect("the order flow is a consistent board")
}

/// The browser: `AETHER_CHROMIUM`, else `chromium` on `PATH`. Panics with the install hint.
fn chromium() -> PathBuf {
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
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Self {
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
fn browse(profile: &Path, page: &Path, args: &[&str]) -> (String, String) {
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

/// The lines of Chromium's log that carry a page's console messages or a failed load.
fn console(log: &str) -> Vec<&str> {
    (log.lines())
        .filter(|l| l.contains(":CONSOLE") || l.contains("net::ERR"))
        .collect()
}

#[test]
fn chromium_draws_the_order_flow_board_with_one_note_per_element_and_a_clean_console() {
    let scratch = Scratch::new("model-render");
    let model = order_flow();
    let page = scratch.0.join("order-flow.html");
    std::fs::write(&page, model.to_html()).expect("write the page");

    // Photographed.
    let png = scratch.0.join("order-flow.png");
    browse(
        &scratch.0.join("profile-shot"),
        &page,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1600,1000",
        ],
    );
    let image = std::fs::read(&png).expect("the screenshot");
    assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    assert!(
        image.len() > 20_000,
        "a picture, not a blank page: {} bytes",
        image.len()
    );

    // Parsed and laid out: the DOM Chromium built holds every note and arrow, and the console
    // stayed clean.
    let (dom, log) = browse(
        &scratch.0.join("profile-dom"),
        &page,
        &["--enable-logging=stderr", "--v=0", "--dump-dom"],
    );
    let elements = model.elements();
    assert_eq!(dom.matches("<rect ").count(), elements.len(), "{dom}");
    for element in &elements {
        assert!(
            dom.contains(&format!(
                "<g class=\"note {}\" data-kind=\"{}\" data-name=\"{}\">",
                element.kind.class(),
                element.kind.class(),
                element.name
            )),
            "{element} is drawn"
        );
    }
    for kind in Kind::ALL {
        let notes = dom.matches(&format!("fill=\"{}\"", kind.colour())).count();
        let expected = elements.iter().filter(|e| e.kind == kind).count();
        assert_eq!(notes, expected, "{kind} notes in {}", kind.colour());
    }
    assert_eq!(
        dom.matches("<path class=\"arrow\"").count(),
        model.links().len()
    );
    assert!(dom.contains("<h1>order flow</h1>"));
    let messages = console(&log);
    assert!(messages.is_empty(), "console messages: {messages:#?}");
    // The check above can see an error: the same run on a page that logs one reports it.
    let noisy = scratch.0.join("noisy.html");
    std::fs::write(&noisy, "<script>console.error(\"boom\")</script>").expect("write");
    let (_, log) = browse(
        &scratch.0.join("profile-noisy"),
        &noisy,
        &["--enable-logging=stderr", "--v=0", "--dump-dom"],
    );
    assert_eq!(console(&log).len(), 1, "{log}");

    if let Some(keep) = std::env::var_os("AETHER_MODEL_SCREENSHOT") {
        std::fs::copy(&png, keep).expect("keep the screenshot");
    }
}
