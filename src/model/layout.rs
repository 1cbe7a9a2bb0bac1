//! Where the HTML drawing puts each sticky note and arrow: a pure function of the board.
//!
//! Five columns in flow order — actors, commands, aggregates, events, then policies, read
//! models and external systems (in that order, as three groups) — each stacked top down and
//! centred vertically. Every arrow that goes with the flow joins neighbouring columns, so it is
//! drawn as a curve across the gap between them. The arrows that go against it (policy or
//! external system → command, external system → event) are drawn as right-angled lines that
//! leave their note on the left, run up the gap, along a lane of their own above the notes and
//! down the gap beside their target: they never cross a note. Each arrow meets its notes at a
//! port of its own, spread evenly along the note's side.

use std::collections::BTreeMap;

use super::{ElementRef, Kind, Model};

mod route;

/// Space around the drawing.
pub const MARGIN: u32 = 24;
/// Width of a note (actors: [`ACTOR_WIDTH`]).
pub const NOTE_WIDTH: u32 = 150;
/// Width of an actor's note, smaller than the others.
pub const ACTOR_WIDTH: u32 = 110;
/// Smallest height of a note (actors: [`ACTOR_MIN_HEIGHT`]).
pub const NOTE_MIN_HEIGHT: u32 = 64;
/// Smallest height of an actor's note.
pub const ACTOR_MIN_HEIGHT: u32 = 44;
/// Space inside a note around its text.
pub const PADDING: u32 = 10;
/// Height of one line of a note's name.
pub const NAME_LINE: u32 = 18;
/// Height of one line of a note's description.
pub const DESCRIPTION_LINE: u32 = 14;
/// Font size of a note's name, in pixels.
pub const NAME_FONT: u32 = 14;
/// Font size of a note's description, in pixels.
pub const DESCRIPTION_FONT: u32 = 11;
/// Most lines of description shown on a note (the rest is in its tooltip).
pub const DESCRIPTION_LINES_MAX: usize = 4;
/// Space between notes of one column.
const NOTE_GAP: u32 = 20;
/// Space between the policies, read models and external systems of the last column.
const GROUP_GAP: u32 = 40;
/// Width of the gap between columns before any vertical line runs through it.
const GUTTER: u32 = 70;
/// Distance of the first vertical line in a gap from the column it serves.
const GUTTER_PAD: u32 = 18;
/// Space between the vertical lines in a gap, and between the lanes above the notes.
const LANE_GAP: u32 = 10;
/// Space between the lowest lane and the notes.
const LANE_CLEARANCE: u32 = 16;

/// The drawing of a board.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Layout {
    /// Width of the drawing.
    pub width: u32,
    /// Height of the drawing.
    pub height: u32,
    /// One note per element, kind by kind in flow order.
    pub notes: Vec<Note>,
    /// One arrow per [`Model::links`] entry, in that order.
    pub arrows: Vec<Arrow>,
}

/// A sticky note.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Note {
    /// The element it stands for.
    pub element: ElementRef,
    /// Where it is.
    pub rect: Rect,
    /// Its name, wrapped to the note's width.
    pub name_lines: Vec<String>,
    /// Its description, wrapped, at most [`DESCRIPTION_LINES_MAX`] lines.
    pub description_lines: Vec<String>,
    /// Its whole description (the tooltip).
    pub description: Option<String>,
}

/// An arrow between two notes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Arrow {
    /// Index in [`Layout::notes`] of the note it starts from.
    pub from: usize,
    /// Index in [`Layout::notes`] of the note it points to.
    pub to: usize,
    /// Its path.
    pub route: Route,
}

/// The path of an arrow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// A cubic Bézier curve: start, two control points, end.
    Curve([Point; 4]),
    /// Straight segments through the points, first to last.
    Lines(Vec<Point>),
}

impl Route {
    /// Where the arrow starts.
    pub fn start(&self) -> Point {
        match self {
            Route::Curve(points) => points[0],
            Route::Lines(points) => points.first().copied().unwrap_or_default(),
        }
    }

    /// Where the arrow points (its head).
    pub fn end(&self) -> Point {
        match self {
            Route::Curve(points) => points[3],
            Route::Lines(points) => points.last().copied().unwrap_or_default(),
        }
    }

    /// The points that hold the path: a curve lies within its four, lines pass through theirs.
    pub fn points(&self) -> &[Point] {
        match self {
            Route::Curve(points) => points,
            Route::Lines(points) => points,
        }
    }

    /// The path as SVG path data (`M x y C …` or `M x y L …`).
    pub fn svg(&self) -> String {
        let p = |p: &Point| format!("{} {}", p.x, p.y);
        match self {
            Route::Curve([a, b, c, d]) => format!("M {} C {}, {}, {}", p(a), p(b), p(c), p(d)),
            Route::Lines(points) => {
                let mut d = String::new();
                for (i, point) in points.iter().enumerate() {
                    d.push_str(if i == 0 { "M " } else { " L " });
                    d.push_str(&p(point));
                }
                d
            }
        }
    }
}

/// A point of the drawing (y grows downwards).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Point {
    /// Distance from the left edge.
    pub x: u32,
    /// Distance from the top edge.
    pub y: u32,
}

/// A rectangle of the drawing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl Rect {
    /// Right edge.
    pub fn right(&self) -> u32 {
        self.x + self.width
    }

    /// Bottom edge.
    pub fn bottom(&self) -> u32 {
        self.y + self.height
    }

    /// Whether the two rectangles share any area (touching edges do not count).
    pub fn overlaps(&self, other: &Rect) -> bool {
        self.x < other.right()
            && other.x < self.right()
            && self.y < other.bottom()
            && other.y < self.bottom()
    }

    /// Whether `point` lies on the rectangle's outline.
    pub fn on_border(&self, point: Point) -> bool {
        let within_x = (self.x..=self.right()).contains(&point.x);
        let within_y = (self.y..=self.bottom()).contains(&point.y);
        (within_x && (point.y == self.y || point.y == self.bottom()))
            || (within_y && (point.x == self.x || point.x == self.right()))
    }
}

/// The column of each kind.
fn column(kind: Kind) -> usize {
    match kind {
        Kind::Actor => 0,
        Kind::Command => 1,
        Kind::Aggregate => 2,
        Kind::Event => 3,
        Kind::Policy | Kind::ReadModel | Kind::ExternalSystem => 4,
    }
}

/// Splits a word that does not fit at its lower-to-upper case changes (`ChargeDeclined` →
/// `Charge`, `Declined`), then anywhere.
fn pieces(word: &str, width: usize) -> Vec<String> {
    let chars: Vec<char> = word.chars().collect();
    if chars.len() <= width {
        return vec![word.to_owned()];
    }
    let mut humps: Vec<String> = vec![String::new()];
    for (i, c) in chars.iter().enumerate() {
        if i > 0 && c.is_uppercase() && chars[i - 1].is_lowercase() {
            humps.push(String::new());
        }
        if let Some(last) = humps.last_mut() {
            last.push(*c);
        }
    }
    let mut out: Vec<String> = Vec::new();
    for hump in humps {
        let hump: Vec<char> = hump.chars().collect();
        for chunk in hump.chunks(width.max(1)) {
            match out.last_mut() {
                Some(line) if line.chars().count() + chunk.len() <= width => line.extend(chunk),
                _ => out.push(chunk.iter().collect()),
            }
        }
    }
    out
}

/// `text` in lines of at most `width` characters, broken between words where it can be.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        for piece in pieces(word, width) {
            let count = line.chars().count();
            if count > 0 && count + 1 + piece.chars().count() <= width {
                line.push(' ');
                line.push_str(&piece);
            } else {
                if count > 0 {
                    lines.push(std::mem::take(&mut line));
                }
                line = piece;
            }
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// Characters of a `font` pixel font that fit in `width` pixels (an average glyph is 0.6 em).
fn fit(width: u32, font: u32) -> usize {
    ((width - 2 * PADDING) * 10 / (font * 6)) as usize
}

/// A note for `element`, at the origin.
fn note(model: &Model, element: ElementRef) -> Note {
    let (width, min_height) = match element.kind {
        Kind::Actor => (ACTOR_WIDTH, ACTOR_MIN_HEIGHT),
        _ => (NOTE_WIDTH, NOTE_MIN_HEIGHT),
    };
    let name_lines = wrap(&element.name, fit(width, NAME_FONT));
    let description = model.description(&element).map(str::to_owned);
    let mut description_lines = description
        .as_deref()
        .map(|d| wrap(d, fit(width, DESCRIPTION_FONT)))
        .unwrap_or_default();
    if description_lines.len() > DESCRIPTION_LINES_MAX {
        description_lines.truncate(DESCRIPTION_LINES_MAX);
        if let Some(last) = description_lines.last_mut() {
            last.push('…');
        }
    }
    let mut height = 2 * PADDING + NAME_LINE * name_lines.len() as u32;
    if !description_lines.is_empty() {
        height += 4 + DESCRIPTION_LINE * description_lines.len() as u32;
    }
    Note {
        element,
        rect: Rect {
            x: 0,
            y: 0,
            width,
            height: height.max(min_height),
        },
        name_lines,
        description_lines,
        description,
    }
}

/// The mean of `places` as a fraction, `None` for none (compared by cross-multiplying).
fn centre(places: impl IntoIterator<Item = usize>) -> Option<(u64, u64)> {
    let (sum, count) = places
        .into_iter()
        .fold((0u64, 0u64), |(s, n), p| (s + p as u64, n + 1));
    (count > 0).then_some((sum, count))
}

/// Orders `items` by where the things they connect to sit; unconnected ones last, ties in
/// board order.
fn by_centre<T>(items: &mut [(T, Option<(u64, u64)>)]) {
    items.sort_by(|(_, a), (_, b)| match (a, b) {
        (Some((sa, na)), Some((sb, nb))) => (sa * nb).cmp(&(sb * na)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
}

/// The elements of each column, top to bottom; the last column's groups separated by a
/// `None`.
fn columns(model: &Model) -> [Vec<Option<ElementRef>>; 5] {
    let mut commands: Vec<&str> = Vec::new();
    let mut events: Vec<&str> = Vec::new();
    fn add<'a>(list: &mut Vec<&'a str>, name: &'a str) {
        if !list.contains(&name) {
            list.push(name);
        }
    }
    for aggregate in model.aggregates() {
        aggregate.handles.iter().for_each(|c| add(&mut commands, c));
        aggregate.emits.iter().for_each(|e| add(&mut events, e));
    }
    for external in model.externals() {
        external.emits.iter().for_each(|e| add(&mut events, e));
    }
    model
        .commands()
        .iter()
        .for_each(|c| add(&mut commands, &c.name));
    model
        .events()
        .iter()
        .for_each(|e| add(&mut events, &e.name));
    let place = |list: &[&str], names: &[String]| -> Option<(u64, u64)> {
        centre(
            names
                .iter()
                .filter_map(|n| list.iter().position(|m| m == n)),
        )
    };

    let mut actors: Vec<_> = model
        .actors()
        .iter()
        .map(|a| (&a.name, place(&commands, &a.issues)))
        .collect();
    by_centre(&mut actors);
    let mut policies: Vec<_> = model
        .policies()
        .iter()
        .map(|p| (&p.name, place(&events, &p.triggered_by)))
        .collect();
    by_centre(&mut policies);
    let mut read_models: Vec<_> = model
        .read_models()
        .iter()
        .map(|r| (&r.name, place(&events, &r.reads)))
        .collect();
    by_centre(&mut read_models);
    let mut externals: Vec<_> = model
        .externals()
        .iter()
        .map(|x| {
            let used: Vec<String> = x.emits.iter().chain(&x.receives).cloned().collect();
            (&x.name, place(&events, &used))
        })
        .collect();
    by_centre(&mut externals);

    let refs = |kind, names: Vec<&String>| -> Vec<Option<ElementRef>> {
        names
            .into_iter()
            .map(|n| Some(ElementRef::new(kind, n)))
            .collect()
    };
    let mut last = Vec::new();
    for group in [
        refs(Kind::Policy, policies.into_iter().map(|(n, _)| n).collect()),
        refs(
            Kind::ReadModel,
            read_models.into_iter().map(|(n, _)| n).collect(),
        ),
        refs(
            Kind::ExternalSystem,
            externals.into_iter().map(|(n, _)| n).collect(),
        ),
    ] {
        if !group.is_empty() && !last.is_empty() {
            last.push(None);
        }
        last.extend(group);
    }
    [
        refs(Kind::Actor, actors.into_iter().map(|(n, _)| n).collect()),
        commands
            .into_iter()
            .map(|c| Some(ElementRef::new(Kind::Command, c)))
            .collect(),
        refs(
            Kind::Aggregate,
            model.aggregates().iter().map(|a| &a.name).collect(),
        ),
        events
            .into_iter()
            .map(|e| Some(ElementRef::new(Kind::Event, e)))
            .collect(),
        last,
    ]
}

/// Lays out `model` ([`Model::layout`]).
pub fn layout(model: &Model) -> Layout {
    let columns = columns(model);
    let links = model.links();
    let backward = links
        .iter()
        .filter(|l| column(l.from.kind) > column(l.to.kind))
        .count() as u32;
    let lanes = links
        .iter()
        .filter(|l| column(l.from.kind) > column(l.to.kind) + 1)
        .count() as u32;
    let top = MARGIN
        + if lanes > 0 {
            lanes * LANE_GAP + LANE_CLEARANCE
        } else {
            0
        };
    // Vertical lines run in the gap before the last column (every backward arrow) and the gap
    // after the commands (those that reach a command).
    let gutters = [
        GUTTER,
        GUTTER + lanes * LANE_GAP,
        GUTTER,
        GUTTER + backward * LANE_GAP,
    ];

    let mut stacks: Vec<Vec<Note>> = Vec::new();
    let mut heights = Vec::new();
    for elements in &columns {
        let mut y = 0;
        let mut stack = Vec::new();
        for (i, element) in elements.iter().enumerate() {
            match element {
                Some(element) => {
                    if i > 0 && elements[i - 1].is_some() {
                        y += NOTE_GAP;
                    }
                    let mut note = note(model, element.clone());
                    note.rect.y = y;
                    y += note.rect.height;
                    stack.push(note);
                }
                None => y += GROUP_GAP,
            }
        }
        stacks.push(stack);
        heights.push(y);
    }
    let tallest = heights.iter().copied().max().unwrap_or(0);
    let mut x = MARGIN;
    let mut notes = Vec::new();
    for (c, stack) in stacks.into_iter().enumerate() {
        let width = if c == 0 { ACTOR_WIDTH } else { NOTE_WIDTH };
        let shift = top + (tallest - heights[c]) / 2;
        for mut note in stack {
            note.rect.x = x + (width - note.rect.width) / 2;
            note.rect.y += shift;
            notes.push(note);
        }
        x += width + gutters.get(c).copied().unwrap_or(0);
    }
    notes.sort_by_key(|n| Kind::ALL.iter().position(|k| *k == n.element.kind));
    let index: BTreeMap<&ElementRef, usize> = notes
        .iter()
        .enumerate()
        .map(|(i, n)| (&n.element, i))
        .collect();
    let ends: Vec<(usize, usize)> = links
        .iter()
        .filter_map(|l| Some((*index.get(&l.from)?, *index.get(&l.to)?)))
        .collect();
    let arrows = route::arrows(&notes, &ends, MARGIN);
    Layout {
        width: x + MARGIN,
        height: top + tallest + MARGIN,
        notes,
        arrows,
    }
}
