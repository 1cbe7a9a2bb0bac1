//! The board as a self-contained HTML page: an inline SVG drawing of its layout, no scripts,
//! nothing fetched.

use std::fmt::Write as _;

use super::layout::{DESCRIPTION_LINE, Layout, NAME_LINE, Note};
use super::{Kind, Model};

/// `text` safe inside an HTML element or a quoted attribute.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"body { margin: 0; padding: 16px 24px; background: #f4f1ea; color: #222;
  font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 20px; font-weight: 600; margin: 0 0 8px; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 16px; list-style: none; padding: 0;
  margin: 0 0 12px; font-size: 13px; }
.legend li { display: flex; align-items: center; gap: 6px; }
.swatch { display: inline-block; width: 16px; height: 16px; border: 1px solid rgba(0,0,0,.3); }
svg.board { background: #fff; border: 1px solid #d8d2c4; display: block; }
.arrow { fill: none; stroke: #555; stroke-width: 1.5; stroke-linejoin: round; }
.note rect { stroke-width: 1; filter: drop-shadow(2px 3px 2px rgba(0,0,0,.22)); }
.note text { fill: #111; }
.note .name { font-size: 14px; }
.note .description { font-size: 11px; font-style: italic; fill: #333; }
"#;

/// One sticky note: its rectangle, its name and description centred in it, its tooltip.
fn note(out: &mut String, note: &Note) {
    let kind = note.element.kind;
    let rect = note.rect;
    let _ = writeln!(
        out,
        "<g class=\"note {}\" data-kind=\"{}\" data-name=\"{}\">",
        kind.class(),
        kind.class(),
        escape(&note.element.name)
    );
    let tip = match &note.description {
        Some(description) => format!("{kind}: {}\n{description}", note.element.name),
        None => format!("{kind}: {}", note.element.name),
    };
    let _ = writeln!(out, "<title>{}</title>", escape(&tip));
    let _ = writeln!(
        out,
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"2\" fill=\"{}\" stroke=\"{}\"/>",
        rect.x,
        rect.y,
        rect.width,
        rect.height,
        kind.colour(),
        kind.stroke()
    );
    let names = note.name_lines.len() as u32 * NAME_LINE;
    let descriptions = match note.description_lines.len() as u32 {
        0 => 0,
        n => 4 + n * DESCRIPTION_LINE,
    };
    let top = rect.y + rect.height.saturating_sub(names + descriptions) / 2;
    let cx = rect.x + rect.width / 2;
    let mut text = |class: &str, lines: &[String], top: u32, line: u32, baseline: u32| {
        if lines.is_empty() {
            return;
        }
        let _ = write!(out, "<text class=\"{class}\" text-anchor=\"middle\">");
        for (i, content) in lines.iter().enumerate() {
            let y = top + i as u32 * line + baseline;
            let _ = write!(
                out,
                "<tspan x=\"{cx}\" y=\"{y}\">{}</tspan>",
                escape(content)
            );
        }
        let _ = writeln!(out, "</text>");
    };
    text("name", &note.name_lines, top, NAME_LINE, 13);
    text(
        "description",
        &note.description_lines,
        top + names + 4,
        DESCRIPTION_LINE,
        11,
    );
    let _ = writeln!(out, "</g>");
}

pub(super) fn render(model: &Model, layout: &Layout) -> String {
    let title = escape(model.name());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{title} — EventStorming board</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n\
         <h1>{title}</h1>"
    );
    let _ = writeln!(out, "<ul class=\"legend\">");
    for kind in Kind::ALL {
        let _ = writeln!(
            out,
            "<li><span class=\"swatch\" style=\"background:{}\"></span>{}</li>",
            kind.colour(),
            kind.label()
        );
    }
    let _ = writeln!(out, "</ul>");
    let _ = writeln!(
        out,
        "<svg class=\"board\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         aria-label=\"EventStorming board: {title}\">",
        w = layout.width,
        h = layout.height
    );
    let _ = writeln!(
        out,
        "<defs><marker id=\"head\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" \
         markerWidth=\"8\" markerHeight=\"8\" markerUnits=\"userSpaceOnUse\" orient=\"auto\">\
         <path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#555\"/></marker></defs>"
    );
    let _ = writeln!(out, "<g class=\"arrows\">");
    for arrow in &layout.arrows {
        let (from, to) = (&layout.notes[arrow.from], &layout.notes[arrow.to]);
        let _ = writeln!(
            out,
            "<path class=\"arrow\" data-from=\"{}\" data-to=\"{}\" d=\"{}\" marker-end=\"url(#head)\"/>",
            escape(&from.element.to_string()),
            escape(&to.element.to_string()),
            arrow.route.svg()
        );
    }
    let _ = writeln!(out, "</g>\n<g class=\"notes\">");
    for n in &layout.notes {
        note(&mut out, n);
    }
    let _ = writeln!(out, "</g>\n</svg>\n</body>\n</html>");
    out
}
