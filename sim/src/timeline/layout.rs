//! What the timeline shows, computed from the run: lanes with operations packed into rows,
//! fault spans, leader terms and assignment epochs, and the operations a violation names. Pure
//! functions of the history; the page only draws them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::checkers::Violation;
use crate::history::{ClusterObservation, Op, OpKind, Outcome};

/// The lane of the broker host (KV writes as it applied them, broker faults).
pub const BROKER_LANE: &str = "broker";

/// Operations overlapping in time on one lane are stacked in at most this many rows; beyond it
/// they share the row that frees up first.
pub const ROWS_MAX: usize = 8;

/// One operation's place on the page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    /// Index of the op in the run's operations.
    pub index: usize,
    /// Its lane.
    pub lane: usize,
    /// Its row within the lane.
    pub row: usize,
    /// Drawn from (ms).
    pub start: u64,
    /// Drawn to (ms); for an operation that never completed, the crash of its node that cut it
    /// short, else the end of the run.
    pub end: u64,
}

/// A shaded span (a fault, a phase) or an instant (`start == end`) on one lane, or on every
/// lane (`lane == None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    /// The lane, or `None` for all of them.
    pub lane: Option<usize>,
    /// Start (ms).
    pub start: u64,
    /// End (ms).
    pub end: u64,
    /// Style: `partition`, `oneway`, `crash`, `hold`, `latency`, `drift`, `replyloss`,
    /// `bounce`, `skew`, `churn`, `note`, `heal`, `leading`.
    pub kind: &'static str,
    /// What it is.
    pub label: String,
}

/// A segment of a band (leader terms, assignment epochs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Start (ms).
    pub start: u64,
    /// End (ms).
    pub end: u64,
    /// The node it belongs to (a leader term's node; none for an epoch).
    pub node: Option<usize>,
    /// Label (`n1 t42`, `e3`).
    pub label: String,
    /// Its row in the band: overlapping segments (two leaders at once) get rows of their own.
    pub row: usize,
}

/// Milliseconds of a simulated time.
pub fn ms(t: Duration) -> u64 {
    u64::try_from(t.as_millis()).unwrap_or(u64::MAX)
}

/// The lanes: the given nodes in order, the broker, then any other node name met in the ops
/// (sorted). KV writes go to the broker's lane (the host records them as it applies them).
pub fn lanes(nodes: &[String], ops: &[Op]) -> Vec<String> {
    let mut lanes: Vec<String> = nodes.to_vec();
    lanes.push(BROKER_LANE.to_owned());
    let known: BTreeSet<&str> = lanes.iter().map(String::as_str).collect();
    let extra: BTreeSet<&str> = ops
        .iter()
        .filter(|op| !matches!(op.kind, OpKind::KvWrite { .. }))
        .map(|op| op.node.as_str())
        .filter(|n| !known.contains(n))
        .collect();
    lanes.extend(extra.into_iter().map(str::to_owned));
    lanes
}

fn lane_of(lanes: &[String], op: &Op) -> usize {
    let name = match op.kind {
        OpKind::KvWrite { .. } => BROKER_LANE,
        _ => op.node.as_str(),
    };
    lanes.iter().position(|l| l == name).unwrap_or(0)
}

/// Places every operation in its lane, packing overlapping ones into rows (first free row;
/// at most [`ROWS_MAX`]). A KV write is drawn from when its writer sent it to when the broker
/// applied it; an operation that never completed up to the first of `spans`' crashes of its
/// lane after it began. Returns the placements and the number of rows of each lane.
pub fn place(
    lanes: &[String],
    ops: &[Op],
    spans: &[Span],
    end: Duration,
) -> (Vec<Placed>, Vec<usize>) {
    let end = ms(end);
    let crashes: BTreeSet<(usize, u64)> = spans
        .iter()
        .filter(|s| s.kind == "crash")
        .filter_map(|s| Some((s.lane?, s.start)))
        .collect();
    let cut_short = |lane: usize, start: u64| {
        crashes
            .range((lane, start)..(lane, u64::MAX))
            .next()
            .map_or(end, |(_, at)| *at)
    };
    let mut rows: Vec<Vec<u64>> = vec![Vec::new(); lanes.len()];
    let mut placed = Vec::with_capacity(ops.len());
    for (index, op) in ops.iter().enumerate() {
        let lane = lane_of(lanes, op);
        let start = match &op.kind {
            OpKind::KvWrite { sent_at, .. } => ms(*sent_at).min(ms(op.invoked)),
            _ => ms(op.invoked),
        };
        let stop = op
            .completed
            .map_or_else(|| cut_short(lane, start), ms)
            .max(start);
        let lane_rows = &mut rows[lane];
        // Rows are free again 1 ms after their last op, so instants side by side stay apart.
        let row = match lane_rows.iter().position(|free| *free <= start) {
            Some(row) => row,
            None if lane_rows.len() < ROWS_MAX => {
                lane_rows.push(0);
                lane_rows.len() - 1
            }
            None => (0..lane_rows.len())
                .min_by_key(|r| lane_rows[*r])
                .unwrap_or(0),
        };
        lane_rows[row] = lane_rows[row].max(stop + 1);
        placed.push(Placed {
            index,
            lane,
            row,
            start,
            end: stop,
        });
    }
    let counts = rows.iter().map(|r| r.len().max(1)).collect();
    (placed, counts)
}

/// Fault spans from the fault timeline's lines (as `Fault`'s `Display` writes them): a
/// partition lasts until its repair, a hold until its release, a crash until its restart, a
/// latency or drift until it is set back (or changed), reply loss until it is set to 0; all
/// until "heal everything". Broker bounces, skews, leader churn and unknown lines are instants.
pub fn fault_spans(lanes: &[String], faults: &[(Duration, String)], end: Duration) -> Vec<Span> {
    let lane = |name: &str| lanes.iter().position(|l| l == name);
    let broker = lane(BROKER_LANE);
    let base_latency = format!("up to {} ms", ms(crate::faults::BASE_LATENCY_MAX));
    let mut spans = OpenSpans::default();
    for (at, line) in faults {
        let at = ms(*at);
        let words: Vec<&str> = line.split_whitespace().collect();
        let node = words.get(1).and_then(|w| lane(w));
        match (words.first().copied(), node) {
            (Some("partition"), Some(n)) => {
                let kind = if line.contains("one way") {
                    "oneway"
                } else {
                    "partition"
                };
                spans.start((Some(n), "link"), kind, at, line);
            }
            (Some("repair"), Some(n)) => spans.close((Some(n), "link"), at),
            (Some("hold"), Some(n)) => spans.start((Some(n), "hold"), "hold", at, line),
            (Some("release"), Some(n)) => spans.close((Some(n), "hold"), at),
            (Some("crash"), Some(n)) => spans.start((Some(n), "crash"), "crash", at, line),
            (Some("restart"), Some(n)) => spans.close((Some(n), "crash"), at),
            (Some("latency"), Some(n)) => {
                spans.close((Some(n), "latency"), at);
                // Back to the base latency: the spike is over.
                if !line.ends_with(&base_latency) {
                    spans.start((Some(n), "latency"), "latency", at, line);
                }
            }
            (Some("drift"), Some(n)) => {
                spans.close((Some(n), "drift"), at);
                if !line.ends_with("rate 1.000") {
                    spans.start((Some(n), "drift"), "drift", at, line);
                }
            }
            (Some("broker"), _) if line.starts_with("broker drops") => {
                spans.close((broker, "replyloss"), at);
                if !line.starts_with("broker drops 0/") {
                    spans.start((broker, "replyloss"), "replyloss", at, line);
                }
            }
            (Some("heal"), _) => {
                spans.close_all(at);
                spans.out.push(instant(None, at, "heal", line));
            }
            (Some("bounce"), _) => spans.out.push(instant(broker, at, "bounce", line)),
            (Some("skew"), Some(n)) => spans.out.push(instant(Some(n), at, "skew", line)),
            (Some("leader"), _) => {
                let aimed = words.get(4).map(|w| w.trim_end_matches(':'));
                spans
                    .out
                    .push(instant(aimed.and_then(lane), at, "churn", line));
            }
            _ => spans.out.push(instant(None, at, "note", line)),
        }
    }
    spans.close_all(ms(end));
    let mut out = spans.out;
    out.sort_by_key(|s| (s.start, s.lane, s.end));
    out
}

/// Fault spans begun and not yet ended, by (lane, family), and the finished ones.
#[derive(Default)]
struct OpenSpans {
    open: BTreeMap<(Option<usize>, &'static str), (u64, &'static str, String)>,
    out: Vec<Span>,
}

impl OpenSpans {
    fn start(
        &mut self,
        key: (Option<usize>, &'static str),
        kind: &'static str,
        at: u64,
        label: &str,
    ) {
        self.close(key, at);
        self.open.insert(key, (at, kind, label.to_owned()));
    }

    fn close(&mut self, key: (Option<usize>, &'static str), at: u64) {
        if let Some((start, kind, label)) = self.open.remove(&key) {
            self.out.push(Span {
                lane: key.0,
                start,
                end: at,
                kind,
                label,
            });
        }
    }

    fn close_all(&mut self, at: u64) {
        let keys: Vec<_> = self.open.keys().copied().collect();
        for key in keys {
            self.close(key, at);
        }
    }
}

fn instant(lane: Option<usize>, at: u64, kind: &'static str, label: &str) -> Span {
    Span {
        lane,
        start: at,
        end: at,
        kind,
        label: label.to_owned(),
    }
}

/// Leader terms, from the cluster observations (all in true time): from `Leading` to the
/// `acted_until` of its `Stepped`, else the node's `Down`, `Stopped` or a new `Started`, else
/// (still open at the end) its last deadline — as the leadership checker reads them.
pub fn leader_terms(lanes: &[String], ops: &[Op], end: Duration) -> Vec<Segment> {
    struct Open {
        start: u64,
        token: u64,
        deadline: u64,
    }
    let mut open: BTreeMap<usize, Open> = BTreeMap::new();
    let mut out = Vec::new();
    let finish = |out: &mut Vec<Segment>, node: usize, term: Open, at: u64| {
        out.push(Segment {
            start: term.start,
            end: at.max(term.start),
            node: Some(node),
            label: format!("{} t{}", lanes[node], term.token),
            row: 0,
        });
    };
    for op in ops {
        let OpKind::Cluster(observation) = &op.kind else {
            continue;
        };
        let Some(node) = lanes.iter().position(|l| *l == op.node) else {
            continue;
        };
        let now = ms(op.invoked);
        match observation {
            ClusterObservation::Leading { token, deadline } => {
                if let Some(term) = open.remove(&node) {
                    finish(&mut out, node, term, now);
                }
                open.insert(
                    node,
                    Open {
                        start: now,
                        token: *token,
                        deadline: ms(*deadline),
                    },
                );
            }
            ClusterObservation::Renewed {
                token, deadline, ..
            } => {
                if let Some(term) = open.get_mut(&node).filter(|t| t.token == *token) {
                    term.deadline = term.deadline.max(ms(*deadline));
                }
            }
            ClusterObservation::Stepped {
                token, acted_until, ..
            } => {
                if open.get(&node).is_some_and(|t| t.token == *token)
                    && let Some(term) = open.remove(&node)
                {
                    finish(&mut out, node, term, ms(*acted_until));
                }
            }
            ClusterObservation::Down
            | ClusterObservation::Stopped
            | ClusterObservation::Started => {
                if let Some(term) = open.remove(&node) {
                    finish(&mut out, node, term, now);
                }
            }
            _ => {}
        }
    }
    let end = ms(end);
    for (node, term) in open {
        let until = term.deadline.min(end);
        finish(&mut out, node, term, until);
    }
    out.sort_by_key(|s| (s.start, s.node));
    // Terms that overlap in time are the ones to see: stack them.
    let mut rows: Vec<u64> = Vec::new();
    for term in &mut out {
        term.row = match rows.iter().position(|free| *free <= term.start) {
            Some(row) => row,
            None => {
                rows.push(0);
                rows.len() - 1
            }
        };
        rows[term.row] = term.end;
    }
    out
}

/// Assignment epochs: each from the first time any node applied it to the first time any node
/// applied a later one (or the end of the run).
pub fn epochs(ops: &[Op], end: Duration) -> Vec<Segment> {
    let mut first_applied: BTreeMap<u64, u64> = BTreeMap::new();
    for op in ops {
        if let OpKind::Cluster(ClusterObservation::Applied { epoch, .. }) = &op.kind {
            first_applied.entry(*epoch).or_insert(ms(op.invoked));
        }
    }
    let starts: Vec<(u64, u64)> = first_applied.into_iter().collect();
    let end = ms(end);
    starts
        .iter()
        .enumerate()
        .map(|(i, (epoch, start))| {
            // The next epoch's first application may precede this one's (out of order on
            // different nodes): the segment then has no width, but keeps its place.
            let next = starts.get(i + 1).map_or(end, |(_, s)| *s).max(*start);
            Segment {
                start: *start,
                end: next,
                node: None,
                label: format!("e{epoch}"),
                row: 0,
            }
        })
        .collect()
}

/// The operations the violations name: by op id (`op #N`, `ops [..]`); by the stream sequence
/// of a record an operation stored or planted (`seq N`); a leader term by its token (`token N`:
/// the `Leading` observation); an assignment by its epoch (`epoch N`: its publication).
/// Indices into `ops`.
pub fn highlighted(ops: &[Op], violations: &[Violation]) -> BTreeSet<usize> {
    let by_id: BTreeMap<usize, usize> = ops.iter().enumerate().map(|(i, o)| (o.id, i)).collect();
    let mut by_sequence: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    let mut by_token: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    let mut by_epoch: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        match (&op.kind, &op.outcome) {
            (OpKind::Append { .. }, Outcome::Appended { sequence, .. })
            | (OpKind::Damage { .. }, Outcome::Damaged { sequence }) => {
                by_sequence.entry(*sequence).or_default().push(i);
            }
            (OpKind::Cluster(ClusterObservation::Leading { token, .. }), _) => {
                by_token.entry(*token).or_default().push(i);
            }
            (OpKind::Cluster(ClusterObservation::Published { epoch, .. }), _) => {
                by_epoch.entry(*epoch).or_default().push(i);
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    for violation in violations {
        out.extend(violation.op_ids().iter().filter_map(|id| by_id.get(id)));
        for (keyword, index) in [
            ("seq", &by_sequence),
            ("token", &by_token),
            ("epoch", &by_epoch),
        ] {
            for number in violation.numbers_after(keyword) {
                out.extend(index.get(&number).into_iter().flatten());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn faults_become_spans_until_they_are_undone() {
        let lanes = vec!["n0".to_owned(), "n1".to_owned(), BROKER_LANE.to_owned()];
        let faults = vec![
            (s(1.0), "partition n1 --/-> broker (one way)".to_owned()),
            (s(2.0), "crash n0".to_owned()),
            (s(2.5), "repair n1 <-> broker".to_owned()),
            (
                s(3.0),
                "broker drops 100/1000 committed-write replies".to_owned(),
            ),
            (s(3.5), "latency n1 <-> broker up to 600 ms".to_owned()),
            (s(4.0), "latency n1 <-> broker up to 20 ms".to_owned()),
            (s(4.5), "bounce broker".to_owned()),
            (s(6.0), "heal everything; liveness phase begins".to_owned()),
        ];
        let spans = fault_spans(&lanes, &faults, s(9.0));
        let summary: Vec<(Option<usize>, u64, u64, &str)> = spans
            .iter()
            .map(|s| (s.lane, s.start, s.end, s.kind))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Some(1), 1000, 2500, "oneway"),
                (Some(0), 2000, 6000, "crash"),
                (Some(2), 3000, 6000, "replyloss"),
                (Some(1), 3500, 4000, "latency"),
                (Some(2), 4500, 4500, "bounce"),
                (None, 6000, 6000, "heal"),
            ]
        );
    }

    fn op(id: usize, node: &str, kind: OpKind, at: f64, done: Option<f64>) -> Op {
        Op {
            id,
            node: node.to_owned(),
            incarnation: 1,
            kind,
            invoked: s(at),
            completed: done.map(s),
            outcome: Outcome::Observed,
        }
    }

    #[test]
    fn overlapping_operations_get_rows_and_pending_ones_last_to_the_end() {
        let read = |id, at, done| {
            op(
                id,
                "n0",
                OpKind::Read {
                    actor: "a".into(),
                    from: 1,
                },
                at,
                done,
            )
        };
        let ops = vec![
            read(0, 1.0, Some(2.0)),
            read(1, 1.5, Some(1.8)),
            read(2, 2.5, None),
        ];
        let lanes = lanes(&["n0".to_owned()], &ops);
        let (placed, rows) = place(&lanes, &ops, &[], s(5.0));
        let rows_of: Vec<usize> = placed.iter().map(|p| p.row).collect();
        assert_eq!(rows_of, vec![0, 1, 0]);
        assert_eq!(placed[2].end, 5000);
        assert_eq!(rows, vec![2, 1]);
        // A crash of its node cuts a pending operation short.
        let crash = instant(Some(0), 4000, "crash", "crash n0");
        let (placed, _) = place(&lanes, &ops, &[crash], s(5.0));
        assert_eq!(placed[2].end, 4000);
    }

    #[test]
    fn leader_terms_end_at_their_step_down_or_crash() {
        let cluster = |id, node: &str, o, at| op(id, node, OpKind::Cluster(o), at, Some(at));
        let ops = vec![
            cluster(
                0,
                "n0",
                ClusterObservation::Leading {
                    token: 5,
                    deadline: s(3.0),
                },
                1.0,
            ),
            cluster(
                1,
                "n0",
                ClusterObservation::Stepped {
                    token: 5,
                    acted_until: s(2.5),
                    reason: "DeadlineReached".into(),
                },
                2.6,
            ),
            cluster(
                2,
                "n1",
                ClusterObservation::Leading {
                    token: 9,
                    deadline: s(6.0),
                },
                4.0,
            ),
            cluster(3, "n1", ClusterObservation::Down, 4.5),
        ];
        let lanes = vec!["n0".to_owned(), "n1".to_owned()];
        let terms = leader_terms(&lanes, &ops, s(10.0));
        let summary: Vec<(u64, u64, &str)> = terms
            .iter()
            .map(|t| (t.start, t.end, t.label.as_str()))
            .collect();
        assert_eq!(summary, vec![(1000, 2500, "n0 t5"), (4000, 4500, "n1 t9")]);
        assert_eq!(
            (terms[0].row, terms[1].row),
            (0, 0),
            "apart in time: one row"
        );
        // Terms still open at the end last to their deadlines; overlapping ones are stacked.
        let overlapping = vec![
            ops[0].clone(),
            cluster(
                1,
                "n1",
                ClusterObservation::Leading {
                    token: 9,
                    deadline: s(6.0),
                },
                2.0,
            ),
        ];
        let terms = leader_terms(&lanes, &overlapping, s(10.0));
        let rows: Vec<(u64, u64, usize)> = terms.iter().map(|t| (t.start, t.end, t.row)).collect();
        assert_eq!(rows, vec![(1000, 3000, 0), (2000, 6000, 1)]);
    }
}
