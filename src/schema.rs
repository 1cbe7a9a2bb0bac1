//! Typed domain events and their evolution.
//!
//! - [`DomainEvent`]: a serde enum whose variants are an aggregate's event types. The variant
//!   name is the stored event type, the variant's content is the stored data — so the stored
//!   form stays the plain [`Event`] (type name, JSON data) that tools, projections and other
//!   languages read, and a typo in a type name no longer compiles.
//! - Schema versions: every stored event records the schema version of its data (1 unless the
//!   type says otherwise, [`DomainEvent::schema_version`]).
//! - [`Upcasters`]: a chain of functions keyed by (type, version), each lifting data of one
//!   version to the next (and optionally renaming the type), applied on replay before the
//!   typed decode. Snapshots carry the state's schema version and have a chain of their own.
//!
//! A record that cannot be decoded — data of the wrong shape, a version newer than this build
//! knows, a version no upcaster lifts — is a typed [`EventDecodeError`] naming the actor,
//! version and type, never skipped and never folded as a default.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, EnumAccess, VariantAccess, Visitor};
use serde::{Deserializer, Serialize};
use serde_json::Value;

use crate::event::{Event, NewEvent};
use crate::telemetry;

/// The events of one aggregate type, as one serde enum: each variant is an event type.
///
/// ```
/// use aether::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize)]
/// enum AccountEvent {
///     Opened,                       // type "Opened", data null
///     Deposited { amount: i64 },    // type "Deposited", data {"amount": …}
///     Withdrawn(i64),               // type "Withdrawn", data …
/// }
///
/// impl DomainEvent for AccountEvent {
///     fn schema_version(event_type: &str) -> u32 {
///         match event_type {
///             "Deposited" => 2, // its data changed shape once: see `Upcasters`
///             _ => 1,
///         }
///     }
/// }
///
/// let stored = AccountEvent::Deposited { amount: 5 }.encode().unwrap();
/// assert_eq!((stored.event_type.as_str(), stored.schema_version), ("Deposited", 2));
/// let back = AccountEvent::decode(&stored.event_type, &stored.data).unwrap();
/// assert_eq!(back, AccountEvent::Deposited { amount: 5 });
/// ```
///
/// The default `encode`/`decode` use serde's default (externally tagged) enum representation:
/// keep the enum free of `#[serde(tag = …)]`/`untagged` attributes, or override both methods.
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The schema version events of `event_type` are written with: 1 until the type's data
    /// changes shape. Raise it when it does, and register an upcaster from the previous
    /// version ([`Upcasters::event`]) so that stored events of that version still decode.
    fn schema_version(event_type: &str) -> u32 {
        let _ = event_type;
        1
    }

    /// The event as the store keeps it: type name, schema version and JSON data.
    ///
    /// # Errors
    /// [`EventEncodeError`] when the value does not serialise as one enum variant.
    fn encode(&self) -> Result<NewEvent, EventEncodeError> {
        let (event_type, data) = match serde_json::to_value(self) {
            Ok(Value::String(name)) => (name, Value::Null),
            Ok(Value::Object(map)) if map.len() == 1 => map.into_iter().next().expect("one entry"),
            Ok(other) => {
                return Err(EventEncodeError(format!(
                    "an event must serialise as one enum variant (a string or a map of one \
                     entry), not {}",
                    json_kind(&other)
                )));
            }
            Err(e) => return Err(EventEncodeError(e.to_string())),
        };
        let version = Self::schema_version(&event_type);
        Ok(NewEvent::new(event_type, data).with_schema_version(version))
    }

    /// Decodes data stored under `event_type` at the current schema version (upcasting has
    /// run before).
    ///
    /// # Errors
    /// The serde error when the type is unknown or the data has another shape.
    fn decode(event_type: &str, data: &Value) -> Result<Self, serde_json::Error> {
        Self::deserialize(Tagged { event_type, data })
    }

    /// The event's type name, as stored.
    ///
    /// # Errors
    /// As [`encode`](Self::encode).
    fn event_type(&self) -> Result<String, EventEncodeError> {
        self.encode().map(|e| e.event_type)
    }
}

/// An event value that does not serialise as an enum variant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event does not encode: {0}")]
pub struct EventEncodeError(pub String);

/// Why a stored event could not be decoded as its aggregate's typed event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error(
    "event {version} of actor {actor_id:?} (type {event_type:?}, schema version {schema_version}) does not decode: {cause}"
)]
#[non_exhaustive]
pub struct EventDecodeError {
    /// The actor.
    pub actor_id: String,
    /// The event's version in the actor's stream.
    pub version: u64,
    /// Its stored type name.
    pub event_type: String,
    /// Its stored schema version.
    pub schema_version: u32,
    /// What is wrong.
    pub cause: DecodeCause,
}

/// What is wrong with an event that does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum DecodeCause {
    /// The data (after upcasting) does not have the shape of the type, or the type is unknown.
    #[error("{0}")]
    Data(String),
    /// Written at a schema version newer than this build's (a newer build wrote it).
    #[error("written at schema version {stored}, newer than this build's {current}")]
    NewerSchema {
        /// The version stored (after any upcasting).
        stored: u32,
        /// The version this build writes.
        current: u32,
    },
    /// Stored by a host of another aggregate type (its [`AGGREGATE`](crate::event::AGGREGATE)
    /// metadata): two types share the actor id in this namespace.
    #[error(
        "stored by aggregate type {found:?}, not {expected:?}: actor ids are shared by every aggregate type of a namespace"
    )]
    OtherAggregate {
        /// The type named by the event.
        found: String,
        /// The type loading it.
        expected: String,
    },
    /// No upcaster lifts this type from this version.
    #[error(
        "no upcaster lifts {event_type:?} from schema version {from} (this build writes {current})"
    )]
    NoUpcaster {
        /// The type reached so far.
        event_type: String,
        /// The version reached so far.
        from: u32,
        /// The version this build writes for that type.
        current: u32,
    },
}

type Lift = Box<dyn Fn(Value) -> Value + Send + Sync>;

/// A chain of upcasters: functions that lift stored data of one schema version to the next,
/// applied on replay before the typed decode, for events (keyed by type and version) and for
/// snapshots (keyed by the state's version).
///
/// ```
/// use aether::Upcasters;
/// use serde_json::{json, Value};
///
/// let upcasters = Upcasters::new()
///     // v1 stored a bare number; v2 an object.
///     .event("Deposited", 1, |amount| json!({ "amount": amount }))
///     // v2 "Deposited" became v3 "Credited" with a currency.
///     .renamed("Deposited", 2, "Credited", |mut data| {
///         data["currency"] = json!("EUR");
///         data
///     })
///     // state v1 had `balance`, v2 calls it `cents`.
///     .snapshot(1, |mut state| {
///         let balance = state["balance"].take();
///         json!({ "cents": balance })
///     });
/// let (ty, version, data) = upcasters
///     .upcast("Deposited", 1, json!(7), |ty| if ty == "Credited" { 3 } else { 1 })
///     .unwrap();
/// assert_eq!((ty.as_str(), version), ("Credited", 3));
/// assert_eq!(data, json!({ "amount": 7, "currency": "EUR" }));
/// ```
#[derive(Default)]
pub struct Upcasters {
    /// By type, then by the version lifted from: the new type and the lift.
    events: BTreeMap<String, BTreeMap<u32, (String, Lift)>>,
    snapshots: BTreeMap<u32, Lift>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upcasters")
            .field("events", &self.event_upcasters().collect::<Vec<_>>())
            .field("snapshots", &self.snapshots.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Upcasters {
    /// No upcasters: every stored event must be at its type's current version.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lifts data of `event_type` stored at `from_version` to `from_version + 1`.
    ///
    /// # Panics
    /// When an upcaster from that type and version is already registered.
    pub fn event(
        self,
        event_type: &str,
        from_version: u32,
        lift: impl Fn(Value) -> Value + Send + Sync + 'static,
    ) -> Self {
        self.renamed(event_type, from_version, event_type, lift)
    }

    /// Lifts data of `event_type` stored at `from_version` to `from_version + 1` of type
    /// `new_type` (a renamed or split-off type).
    ///
    /// # Panics
    /// When an upcaster from that type and version is already registered.
    pub fn renamed(
        mut self,
        event_type: &str,
        from_version: u32,
        new_type: &str,
        lift: impl Fn(Value) -> Value + Send + Sync + 'static,
    ) -> Self {
        let previous = self
            .events
            .entry(event_type.to_owned())
            .or_default()
            .insert(from_version, (new_type.to_owned(), Box::new(lift)));
        assert!(
            previous.is_none(),
            "two upcasters from {event_type:?} version {from_version}"
        );
        self
    }

    /// Lifts snapshot state stored at `from_version` to `from_version + 1`.
    ///
    /// # Panics
    /// When an upcaster from that version is already registered.
    pub fn snapshot(
        mut self,
        from_version: u32,
        lift: impl Fn(Value) -> Value + Send + Sync + 'static,
    ) -> Self {
        let previous = self.snapshots.insert(from_version, Box::new(lift));
        assert!(
            previous.is_none(),
            "two snapshot upcasters from version {from_version}"
        );
        self
    }

    /// Lifts `data` of `event_type` at `version` for as long as an upcaster is registered from
    /// the type and version reached (renaming the type where one says so); the version reached
    /// must then be the one `current` names for the type reached. Returns the type, version and
    /// data reached.
    ///
    /// # Errors
    /// [`DecodeCause::NewerSchema`] when the version reached is above `current`'s,
    /// [`DecodeCause::NoUpcaster`] when it is below.
    pub fn upcast(
        &self,
        event_type: &str,
        version: u32,
        data: Value,
        current: impl Fn(&str) -> u32,
    ) -> Result<(String, u32, Value), DecodeCause> {
        let (mut event_type, mut version, mut data) = (event_type.to_owned(), version, data);
        loop {
            let Some((new_type, lift)) = self.lift(&event_type, version) else {
                let target = current(&event_type);
                return match version.cmp(&target) {
                    std::cmp::Ordering::Equal => Ok((event_type, version, data)),
                    std::cmp::Ordering::Greater => Err(DecodeCause::NewerSchema {
                        stored: version,
                        current: target,
                    }),
                    std::cmp::Ordering::Less => Err(DecodeCause::NoUpcaster {
                        event_type,
                        from: version,
                        current: target,
                    }),
                };
            };
            metrics::counter!(
                telemetry::EVENTS_UPCAST,
                "event_type" => event_type.clone(),
                "from_version" => version.to_string()
            )
            .increment(1);
            data = lift(data);
            event_type.clone_from(new_type);
            version += 1;
        }
    }

    /// Decodes a stored event as `E`, upcasting it first when it is older than `E` writes.
    ///
    /// # Errors
    /// [`EventDecodeError`] naming the event and the cause.
    pub fn decode<E: DomainEvent>(&self, event: &Event) -> Result<E, EventDecodeError> {
        let fail = |cause| EventDecodeError {
            actor_id: event.actor_id.clone(),
            version: event.version,
            event_type: event.event_type.clone(),
            schema_version: event.schema_version,
            cause,
        };
        if self.lift(&event.event_type, event.schema_version).is_none()
            && event.schema_version == E::schema_version(&event.event_type)
        {
            // The hot path: no copy of the data.
            return E::decode(&event.event_type, &event.data)
                .map_err(|e| fail(DecodeCause::Data(e.to_string())));
        }
        let (event_type, _, data) = self
            .upcast(
                &event.event_type,
                event.schema_version,
                event.data.clone(),
                E::schema_version,
            )
            .map_err(fail)?;
        E::decode(&event_type, &data).map_err(|e| fail(DecodeCause::Data(e.to_string())))
    }

    fn lift(&self, event_type: &str, version: u32) -> Option<&(String, Lift)> {
        if self.events.is_empty() {
            return None;
        }
        self.events.get(event_type)?.get(&version)
    }

    /// Lifts snapshot state from `version` to `current`.
    ///
    /// # Errors
    /// Why not: the stored version is newer, or no upcaster lifts it.
    pub fn upcast_snapshot(
        &self,
        version: u32,
        current: u32,
        mut state: Value,
    ) -> Result<Value, SnapshotSkip> {
        if version > current {
            return Err(SnapshotSkip::Newer);
        }
        let mut at = version;
        while at < current {
            let lift = self.snapshots.get(&at).ok_or(SnapshotSkip::NoUpcaster)?;
            state = lift(state);
            at += 1;
        }
        Ok(state)
    }

    /// The event upcasters registered, as (type, from version, new type).
    pub fn event_upcasters(&self) -> impl Iterator<Item = (&str, u32, &str)> {
        self.events.iter().flat_map(|(ty, lifts)| {
            lifts
                .iter()
                .map(move |(from, (to, _))| (ty.as_str(), *from, to.as_str()))
        })
    }
}

/// Why a snapshot is not used (the actor then replays its events from the start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotSkip {
    /// Written at a state version newer than this build's.
    Newer,
    /// No upcaster lifts its state version.
    NoUpcaster,
    /// Its state does not decode (after upcasting).
    Undecodable,
}

impl SnapshotSkip {
    /// The `reason` label of the metric counting skipped snapshots.
    pub fn label(self) -> &'static str {
        match self {
            SnapshotSkip::Newer => "newer_schema",
            SnapshotSkip::NoUpcaster => "no_upcaster",
            SnapshotSkip::Undecodable => "undecodable",
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a map of several entries",
    }
}

/// An externally tagged enum, from a type name and its data kept apart: decodes without
/// assembling (and copying) the `{type: data}` map serde would otherwise expect.
struct Tagged<'a> {
    event_type: &'a str,
    data: &'a Value,
}

impl<'de> Deserializer<'de> for Tagged<'de> {
    type Error = serde_json::Error;

    /// As the map `{type: data}`: what serde's buffering deserializers (untagged variants,
    /// flattening) expect of an externally tagged enum.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(OneEntry {
            event_type: Some(self.event_type),
            data: self.data,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

impl<'de> EnumAccess<'de> for Tagged<'de> {
    type Error = serde_json::Error;
    type Variant = Data<'de>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), Self::Error> {
        let name = de::value::BorrowedStrDeserializer::<serde_json::Error>::new(self.event_type);
        Ok((seed.deserialize(name)?, Data(self.data)))
    }
}

/// The map `{type: data}`, one entry.
struct OneEntry<'a> {
    event_type: Option<&'a str>,
    data: &'a Value,
}

impl<'de> de::MapAccess<'de> for OneEntry<'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.event_type.take() {
            Some(name) => seed
                .deserialize(de::value::BorrowedStrDeserializer::new(name))
                .map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        seed.deserialize(self.data)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(usize::from(self.event_type.is_some()))
    }
}

/// A variant's data.
struct Data<'a>(&'a Value);

impl<'de> VariantAccess<'de> for Data<'de> {
    type Error = serde_json::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        match self.0 {
            Value::Null => Ok(()),
            other => Err(de::Error::invalid_type(
                unexpected(other),
                &"no data (a unit variant)",
            )),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        seed.deserialize(self.0)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        Deserializer::deserialize_seq(self.0, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        Deserializer::deserialize_struct(self.0, "", fields, visitor)
    }
}

fn unexpected(value: &Value) -> de::Unexpected<'_> {
    match value {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(_) => de::Unexpected::Other("a number"),
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum E {
        Unit,
        New(i64),
        Tuple(i64, String),
        Struct { a: i64, b: Option<String> },
    }

    impl DomainEvent for E {}

    #[test]
    fn every_variant_shape_round_trips_and_keeps_the_plain_stored_form() {
        let cases = [
            (E::Unit, "Unit", json!(null)),
            (E::New(4), "New", json!(4)),
            (E::Tuple(1, "x".into()), "Tuple", json!([1, "x"])),
            (
                E::Struct { a: 2, b: None },
                "Struct",
                json!({"a": 2, "b": null}),
            ),
        ];
        for (event, ty, data) in cases {
            let stored = event.encode().unwrap();
            assert_eq!(stored.event_type, ty);
            assert_eq!(stored.data, data);
            assert_eq!(stored.schema_version, 1);
            assert_eq!(E::decode(ty, &data).unwrap(), event);
        }
    }

    #[test]
    fn unknown_types_and_wrong_shapes_are_errors_not_defaults() {
        assert!(E::decode("Missing", &json!(null)).is_err());
        assert!(E::decode("Unit", &json!(1)).is_err());
        assert!(E::decode("New", &json!("four")).is_err());
        assert!(E::decode("Struct", &json!({"b": "x"})).is_err());
    }

    #[test]
    fn an_untagged_catch_all_variant_keeps_known_types_decoding() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        enum Known {
            A { n: i64 },
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        #[serde(untagged)]
        enum Open {
            Known(Known),
            Unknown(serde_json::Value),
        }
        impl DomainEvent for Open {}
        assert_eq!(
            Open::decode("A", &json!({"n": 1})).unwrap(),
            Open::Known(Known::A { n: 1 })
        );
        assert_eq!(
            Open::decode("B", &json!(2)).unwrap(),
            Open::Unknown(json!({"B": 2}))
        );
    }

    #[test]
    fn a_struct_is_not_an_event_enum() {
        #[derive(Serialize, Deserialize)]
        struct NotEnum {
            a: i64,
            b: i64,
        }
        impl DomainEvent for NotEnum {}
        let error = NotEnum { a: 1, b: 2 }.encode().unwrap_err();
        assert!(error.0.contains("one enum variant"), "{error}");
    }

    #[test]
    fn upcasting_stops_at_a_newer_version_or_a_missing_link() {
        let up = Upcasters::new().event("T", 1, |v| v);
        assert_eq!(
            up.upcast("T", 3, json!(1), |_| 2).unwrap_err(),
            DecodeCause::NewerSchema {
                stored: 3,
                current: 2
            }
        );
        assert_eq!(
            up.upcast("T", 1, json!(1), |_| 3).unwrap_err(),
            DecodeCause::NoUpcaster {
                event_type: "T".into(),
                from: 2,
                current: 3
            }
        );
        assert_eq!(
            up.upcast_snapshot(1, 2, json!(1)).unwrap_err(),
            SnapshotSkip::NoUpcaster
        );
        assert_eq!(
            up.upcast_snapshot(3, 2, json!(1)).unwrap_err(),
            SnapshotSkip::Newer
        );
    }
}
