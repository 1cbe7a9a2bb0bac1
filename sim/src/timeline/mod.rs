//! A picture of one run: a self-contained HTML page (inline CSS, JavaScript and SVG; nothing
//! fetched) with one lane per node and one for the broker, every operation as a bar from invoke
//! to completion coloured by outcome, faults as shaded spans, leader terms and assignment
//! epochs as bands above the lanes, and the operations a violation names highlighted. Wheel to
//! zoom, drag to pan, double-click to see the whole run; a violation's operation links zoom to it.
//!
//! [`render`] is a pure function of the run ([`layout`] computes what goes where); the page's
//! script (`page.js`) only draws it. When the script has drawn everything it sets
//! `data-ready="1"` on `<body>`; an uncaught error or `console.error` counts in `data-errors` on
//! `<html>` (tests read both).

pub mod layout;

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::checkers::Violation;
use crate::history::{ClusterObservation, Op, OpKind, Outcome, format_time};
use layout::{Placed, ms};

const PAGE_CSS: &str = include_str!("page.css");
const PAGE_JS: &str = include_str!("page.js");

/// What a timeline is drawn from.
#[derive(Clone, Copy, Debug)]
pub struct TimelineInput<'a> {
    /// The page's heading (scenario, seed, planted bugs).
    pub title: &'a str,
    /// Every operation of the run, in history order (cluster observations in true time).
    pub ops: &'a [Op],
    /// The fault timeline.
    pub faults: &'a [(Duration, String)],
    /// The nodes, in lane order.
    pub nodes: &'a [String],
    /// The broken invariants.
    pub violations: &'a [Violation],
    /// The end of the run.
    pub end: Duration,
}

/// The page, as one HTML string.
pub fn render(input: &TimelineInput<'_>) -> String {
    let lanes = layout::lanes(input.nodes, input.ops);
    let spans = layout::fault_spans(&lanes, input.faults, input.end);
    let (placed, rows) = layout::place(&lanes, input.ops, &spans, input.end);
    let highlighted = layout::highlighted(input.ops, input.violations);
    let data = json!({
        "end": ms(input.end),
        "lanes": lanes.iter().zip(&rows).map(|(name, rows)| json!({"name": name, "rows": rows})).collect::<Vec<_>>(),
        "ops": placed.iter().map(|p| op_json(&input.ops[p.index], p, highlighted.contains(&p.index))).collect::<Vec<_>>(),
        "spans": spans.iter().map(|s| json!([s.lane, s.start, s.end, s.kind, s.label])).collect::<Vec<_>>(),
        "leaders": layout::leader_terms(&lanes, input.ops, input.end).iter().map(|s| json!([s.start, s.end, s.node, s.label, s.row])).collect::<Vec<_>>(),
        "epochs": layout::epochs(input.ops, input.end).iter().map(|s| json!([s.start, s.end, s.label])).collect::<Vec<_>>(),
    });
    // Inside <script>, `</` could end the element early; JSON allows `<\/` for it.
    let data = data.to_string().replace("</", "<\\/");
    let mut page = String::with_capacity(data.len() + PAGE_JS.len() + 16_384);
    let title = escape(input.title);
    let _ = write!(
        page,
        r#"<!doctype html>
<html lang="en" data-errors="0">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{PAGE_CSS}</style>
<script>
(function () {{
  var count = 0;
  function mark(message) {{
    count += 1;
    document.documentElement.setAttribute("data-errors", String(count));
    document.documentElement.setAttribute("data-last-error", String(message));
  }}
  window.addEventListener("error", function (e) {{ mark(e.message); }});
  var original = console.error;
  console.error = function () {{
    mark(Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  }};
}})();
</script>
</head>
<body data-ready="0">
<header>
<h1>{title}</h1>
<div class="legend">
<span class="key ok">ok</span><span class="key refused">refused / fenced</span><span class="key failed">failed</span><span class="key ambiguous">ambiguous</span><span class="key pending">never completed</span><span class="key damaged">damaged</span><span class="key observed">observation</span><span class="key kv">KV write (sent → applied)</span><span class="key hl">named in a violation</span>
<span class="sep"></span><span class="key f-partition">partition</span><span class="key f-oneway">one-way partition</span><span class="key f-crash">crashed</span><span class="key f-hold">held link</span><span class="key f-latency">latency</span><span class="key f-drift">clock drift</span><span class="key f-replyloss">reply loss</span>
</div>
<div class="help">wheel: zoom · drag: pan · double-click: whole run · hover: details · click a violation's op: zoom to it</div>
</header>
<div id="chart"></div>
<div id="tip" hidden></div>
"#
    );
    violations_html(&mut page, input, &highlighted);
    let _ = write!(
        page,
        "<script type=\"application/json\" id=\"timeline-data\">{data}</script>\n<script>\n{PAGE_JS}\n</script>\n</body>\n</html>\n"
    );
    page
}

/// The list of violations under the chart, each with links to the operations it names.
fn violations_html(
    page: &mut String,
    input: &TimelineInput<'_>,
    highlighted: &std::collections::BTreeSet<usize>,
) {
    let _ = write!(
        page,
        "<section id=\"violations\"><h2>Violations ({})</h2>",
        input.violations.len()
    );
    if input.violations.is_empty() {
        page.push_str("<p>none: every invariant held.</p>");
    }
    page.push_str("<ol>");
    for violation in input.violations {
        let _ = write!(
            page,
            "<li><b>invariant {}</b>: {}",
            escape(violation.invariant),
            escape(&violation.detail)
        );
        // The ops this violation names, by index into the run's operations.
        let single = layout::highlighted(input.ops, std::slice::from_ref(violation));
        if !single.is_empty() {
            page.push_str(" <span class=\"oplinks\">");
            for index in single.iter().filter(|i| highlighted.contains(i)) {
                let _ = write!(
                    page,
                    "<a href=\"#\" data-op=\"{index}\">#{}</a> ",
                    input.ops[*index].id
                );
            }
            page.push_str("</span>");
        }
        page.push_str("</li>");
    }
    page.push_str("</ol></section>\n");
}

/// One operation as the page draws it:
/// `[lane, row, start ms, end ms, class, highlighted, id, text]`.
fn op_json(op: &Op, placed: &Placed, highlighted: bool) -> Value {
    let (class, outcome) = outcome_text(op);
    let completed = op.completed.map_or_else(|| "never".to_owned(), format_time);
    let text = format!(
        "#{} {} {}\n{} → {}\n{}",
        op.id,
        op.node,
        describe(&op.kind),
        format_time(op.invoked),
        completed,
        outcome
    );
    json!([
        placed.lane,
        placed.row,
        placed.start,
        placed.end,
        class,
        u8::from(highlighted),
        op.id,
        text
    ])
}

/// A short description of what an operation tried.
fn describe(kind: &OpKind) -> String {
    match kind {
        OpKind::Append {
            actor,
            expected,
            event_ids,
        } => format!(
            "append {actor} expecting {expected} ({} events)",
            event_ids.len()
        ),
        OpKind::Read { actor, from } => format!("read {actor} from v{from}"),
        OpKind::LatestVersion { actor } => format!("latest version of {actor}"),
        OpKind::Load { actor } => format!("load {actor}"),
        OpKind::SaveSnapshot { actor, version } => format!("snapshot {actor} at v{version}"),
        OpKind::Damage { actor } => format!("plant damage on {actor}"),
        OpKind::Cluster(observation) => observation_text(observation),
        OpKind::Command { actor, delta, id } => format!("command {actor} {delta:+} ({id})"),
        OpKind::UserCommand { actor, command } => format!("command {actor}: {command}"),
        OpKind::BusReceived {
            subscriber,
            deliveries,
            lagged,
        } => format!(
            "bus {subscriber} received {} (lagged {lagged})",
            deliveries.len()
        ),
        OpKind::ProjectorStep { projection } => format!("projector step {projection}"),
        OpKind::Handled {
            projection,
            positions,
        } => format!("{projection} handled {} commits", positions.len()),
        OpKind::KvWrite {
            bucket,
            key,
            revision,
            ..
        } => format!("kv write {bucket}/{key} rev {revision}"),
    }
}

fn observation_text(observation: &ClusterObservation) -> String {
    match observation {
        ClusterObservation::Leading { token, deadline } => {
            format!("leading, token {token}, until {}", format_time(*deadline))
        }
        ClusterObservation::Renewed {
            token, deadline, ..
        } => format!("renewed token {token} until {}", format_time(*deadline)),
        ClusterObservation::Stepped {
            token,
            acted_until,
            reason,
        } => format!(
            "stepped down from token {token} ({reason}), acted until {}",
            format_time(*acted_until)
        ),
        ClusterObservation::Published { epoch, token, .. } => {
            format!("published epoch {epoch} under token {token}")
        }
        ClusterObservation::Applied { epoch, shards, .. } => {
            format!("applied epoch {epoch}, hosting {} shards", shards.len())
        }
        ClusterObservation::Released { epoch, shards } => {
            format!("released {} shards of epoch {epoch}", shards.len())
        }
        ClusterObservation::View { leader, epoch, .. } => {
            format!("view: leader {leader:?}, epoch {epoch:?}")
        }
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The colour class of an operation and what its outcome says.
fn outcome_text(op: &Op) -> (&'static str, String) {
    if matches!(op.kind, OpKind::KvWrite { .. }) {
        return ("kv", "applied by the broker".to_owned());
    }
    match &op.outcome {
        Outcome::Pending => ("pending", "never completed (ambiguous)".to_owned()),
        Outcome::Appended {
            commit_id,
            sequence,
            events,
        } => (
            "ok",
            format!(
                "ok: seq {sequence}, versions {}..={}, commit {commit_id}",
                events.first().map_or(0, |e| e.version),
                events.last().map_or(0, |e| e.version)
            ),
        ),
        Outcome::Read { events } => ("ok", format!("ok: read {} events", events.len())),
        Outcome::Version(v) => ("ok", format!("ok: version {v}")),
        Outcome::Loaded { snapshot, events } => (
            "ok",
            format!(
                "ok: snapshot {:?}, {} events after it",
                snapshot.map(|(v, _)| v),
                events.len()
            ),
        ),
        Outcome::Saved => ("ok", "ok: saved".to_owned()),
        Outcome::ReadAround { events, damaged } => (
            "ok",
            format!(
                "ok: read {} events around damage at {damaged:?}",
                events.len()
            ),
        ),
        Outcome::Damaged { sequence } => ("damaged", format!("damaged record at seq {sequence}")),
        Outcome::Refused { value, version } => {
            ("refused", format!("refused on value {value} at v{version}"))
        }
        Outcome::Stepped { records } => ("ok", format!("ok: stepped over {records} records")),
        Outcome::Fenced => ("refused", "fenced by another instance".to_owned()),
        Outcome::Rejected(why) => ("refused", format!("rejected: {why}")),
        Outcome::Failed(why) => ("failed", format!("failed: {why}")),
        Outcome::Ambiguous(why) => ("ambiguous", format!("ambiguous: {why}")),
        Outcome::Observed => ("observed", "observed".to_owned()),
        Outcome::Commanded {
            version,
            node,
            events,
        } => (
            "ok",
            format!("ok: v{version} on {node}, {} events", events.len()),
        ),
    }
}

/// `text` with the HTML special characters escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
