//! The board as a Mermaid flowchart.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::{ElementRef, Kind, Model};

/// The id prefix of each kind: ids never start with a Mermaid keyword (`end`) or with the `o`
/// and `x` that turn an arrow into a circle or cross edge.
fn prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Actor => "actor",
        Kind::Command => "cmd",
        Kind::Aggregate => "agg",
        Kind::Event => "evt",
        Kind::Policy => "policy",
        Kind::ReadModel => "view",
        Kind::ExternalSystem => "sys",
    }
}

/// The node id of every element: the kind's prefix and the name's ASCII letters and digits
/// (every other character becomes `_`), with `_2`, `_3` … when two names come out alike.
fn ids(elements: &[ElementRef]) -> BTreeMap<&ElementRef, String> {
    let mut taken = BTreeSet::new();
    let mut ids = BTreeMap::new();
    for element in elements {
        let clean: String = element
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let base = format!("{}_{clean}", prefix(element.kind));
        let mut id = base.clone();
        let mut n = 1;
        while !taken.insert(id.clone()) {
            n += 1;
            id = format!("{base}_{n}");
        }
        ids.insert(element, id);
    }
    ids
}

/// Text inside a quoted Mermaid label: quotes, `#`, `&`, `<` and `>` as Mermaid entity codes,
/// line breaks and other control characters as spaces.
fn label(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '#' => out.push_str("#35;"),
            '&' => out.push_str("#amp;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The title in the front matter, as a YAML double-quoted string.
fn title(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(super) fn render(model: &Model) -> String {
    let elements = model.elements();
    let ids = ids(&elements);
    let id = |element: &ElementRef| ids.get(element).map_or("missing", String::as_str);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "---\ntitle: {}\n---\nflowchart LR",
        title(model.name())
    );
    for kind in Kind::ALL {
        let mut first = true;
        for element in elements.iter().filter(|e| e.kind == kind) {
            if first {
                let _ = writeln!(out, "    %% {}", kind.label());
                first = false;
            }
            let text = match model.description(element) {
                Some(description) => format!(
                    "{}<br/><small>{}</small>",
                    label(&element.name),
                    label(description)
                ),
                None => label(&element.name),
            };
            let _ = writeln!(out, "    {}[\"{text}\"]:::{}", id(element), kind.class());
        }
    }
    let _ = writeln!(out, "    %% arrows");
    for link in model.links() {
        let _ = writeln!(out, "    {} --> {}", id(&link.from), id(&link.to));
    }
    for kind in Kind::ALL {
        let size = if kind == Kind::Actor {
            ",font-size:12px"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "    classDef {} fill:{},stroke:{},color:#000{size}",
            kind.class(),
            kind.colour(),
            kind.stroke()
        );
    }
    out
}
