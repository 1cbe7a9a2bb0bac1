//! The arrows' paths, once the notes are placed.

use std::collections::BTreeMap;

use super::{GUTTER_PAD, LANE_GAP, Note, Point, Route, column};
use crate::model::layout::Arrow;

/// Which way an arrow runs between the columns.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// With the flow, between neighbouring columns: a curve.
    Forward,
    /// Against the flow, to the column just before: down or up the gap between them.
    Near { slot: u32 },
    /// Against the flow, further back: up the gap, along a lane above the notes, down the gap
    /// beside the target.
    Lane { lane: u32 },
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Left,
    Right,
}

/// One arrow end on a note's side: the height of what it comes from, the arrow, whether the
/// arrow starts here.
type PortEnd = (u32, usize, bool);

fn centre_y(note: &Note) -> u32 {
    note.rect.y + note.rect.height / 2
}

/// The arrows joining `ends` (pairs of indices into `notes`); lanes start at `lanes_top`.
pub(super) fn arrows(notes: &[Note], ends: &[(usize, usize)], lanes_top: u32) -> Vec<Arrow> {
    let col = |i: usize| column(notes[i].element.kind);
    // Lanes are taken in the order of the targets (top target, outermost lane), so the lines
    // that come down beside the targets never cross: crossings, when the sources are in
    // another order, happen near the sources, away from the arrowheads.
    let key = |a: usize| {
        let (from, to) = ends[a];
        (centre_y(&notes[to]), centre_y(&notes[from]), a)
    };
    let mut lane_bound: Vec<usize> = (0..ends.len())
        .filter(|&a| col(ends[a].0) > col(ends[a].1) + 1)
        .collect();
    lane_bound.sort_by_key(|&a| key(a));
    let mut near: Vec<usize> = (0..ends.len())
        .filter(|&a| col(ends[a].0) == col(ends[a].1) + 1)
        .collect();
    near.sort_by_key(|&a| key(a));
    let mut ways = vec![Way::Forward; ends.len()];
    for (lane, &a) in lane_bound.iter().enumerate() {
        ways[a] = Way::Lane { lane: lane as u32 };
    }
    for (k, &a) in near.iter().enumerate() {
        ways[a] = Way::Near {
            slot: (lane_bound.len() + k) as u32,
        };
    }
    let lane_y = |lane: u32| lanes_top + lane * LANE_GAP;

    // Ports: each arrow end gets its own place on its note's side, ordered by where the arrow
    // comes from (a lane counts as above everything).
    let mut sides: BTreeMap<(usize, Side), Vec<PortEnd>> = BTreeMap::new();
    for (a, &(from, to)) in ends.iter().enumerate() {
        let (from_side, to_side) = match ways[a] {
            Way::Forward => (Side::Right, Side::Left),
            _ => (Side::Left, Side::Right),
        };
        let (from_key, to_key) = match ways[a] {
            Way::Lane { lane } => (lane_y(lane), lane_y(lane)),
            _ => (centre_y(&notes[to]), centre_y(&notes[from])),
        };
        sides
            .entry((from, from_side))
            .or_default()
            .push((from_key, a, true));
        sides
            .entry((to, to_side))
            .or_default()
            .push((to_key, a, false));
    }
    let mut starts = vec![Point::default(); ends.len()];
    let mut finishes = vec![Point::default(); ends.len()];
    for ((note, side), mut attached) in sides {
        attached.sort();
        let rect = notes[note].rect;
        let count = attached.len() as u32;
        for (i, (_, a, is_start)) in attached.into_iter().enumerate() {
            let point = Point {
                x: if side == Side::Left {
                    rect.x
                } else {
                    rect.right()
                },
                y: rect.y + (i as u32 + 1) * rect.height / (count + 1),
            };
            if is_start {
                starts[a] = point;
            } else {
                finishes[a] = point;
            }
        }
    }

    ends.iter()
        .enumerate()
        .map(|(a, &(from, to))| {
            let (start, end) = (starts[a], finishes[a]);
            let route = match ways[a] {
                Way::Forward => {
                    let half = end.x.saturating_sub(start.x) / 2;
                    Route::Curve([
                        start,
                        Point {
                            x: start.x + half,
                            y: start.y,
                        },
                        Point {
                            x: end.x - half,
                            y: end.y,
                        },
                        end,
                    ])
                }
                Way::Near { slot } => {
                    let x = start.x - GUTTER_PAD - slot * LANE_GAP;
                    Route::Lines(vec![
                        start,
                        Point { x, y: start.y },
                        Point { x, y: end.y },
                        end,
                    ])
                }
                Way::Lane { lane } => {
                    let up = start.x - GUTTER_PAD - lane * LANE_GAP;
                    let down = end.x + GUTTER_PAD + lane * LANE_GAP;
                    let y = lane_y(lane);
                    Route::Lines(vec![
                        start,
                        Point { x: up, y: start.y },
                        Point { x: up, y },
                        Point { x: down, y },
                        Point { x: down, y: end.y },
                        end,
                    ])
                }
            };
            Arrow { from, to, route }
        })
        .collect()
}
