//! The order-flow board's HTML page, checked in a real browser: headless Chromium photographs
//! it, and its DOM holds one sticky note per element and one arrow per link, with a clean
//! console.
//!
//! Needs Debian's `chromium` (or `AETHER_CHROMIUM=<path>`); without it the test fails with the
//! install command — it never skips. `AETHER_MODEL_SCREENSHOT=<png>` keeps the screenshot (how
//! `docs/model-order-flow.png` is made).

#[path = "support/chromium.rs"]
mod chromium;
#[path = "support/order_flow.rs"]
mod order_flow;

use aether::model::Kind;
use chromium::{Scratch, browse};
use order_flow::order_flow;

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
