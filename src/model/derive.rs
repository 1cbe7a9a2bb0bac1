//! Board elements derived from the code: an [`Aggregate`](crate::Aggregate)'s name, the
//! commands it handles and the events it emits, and a [`Policy`](crate::projection::Policy)'s
//! triggers and commands — so the board drawn is the system that runs.
//!
//! Command and event names are the variant names of the command and event enums, read from
//! serde's own description of them (the variant list serde's derive hands to
//! `deserialize_enum`): no macro, no list kept by hand.

use serde::de::{self, DeserializeOwned, Visitor};

use super::ModelBuilder;
use super::element::{Aggregate, Policy};

/// The variant names of an enum deriving `Deserialize` (serde's default, externally tagged
/// representation), in declaration order; `None` for anything else (a struct, a number, an
/// internally tagged or untagged enum).
pub fn variant_names<T: DeserializeOwned>() -> Option<&'static [&'static str]> {
    match T::deserialize(VariantProbe) {
        Err(Probe::Variants(variants)) => Some(variants),
        _ => None,
    }
}

#[derive(Debug)]
enum Probe {
    Variants(&'static [&'static str]),
    NotAnEnum,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("probing variant names")
    }
}

impl std::error::Error for Probe {}

impl de::Error for Probe {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Probe::NotAnEnum
    }
}

/// A deserializer that answers nothing: it only records the variants an enum announces.
struct VariantProbe;

impl<'de> de::Deserializer<'de> for VariantProbe {
    type Error = Probe;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probe> {
        Err(Probe::NotAnEnum)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Probe> {
        Err(Probe::Variants(variants))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

impl Aggregate {
    /// The board's element for aggregate type `A`: named [`NAME`](crate::Aggregate::NAME),
    /// handling the variants of its command enum and emitting those of its event enum (none,
    /// for a command or event type that is not such an enum).
    pub fn of<A: crate::Aggregate>() -> Self {
        Aggregate::new(A::NAME)
            .handles(
                variant_names::<A::Command>()
                    .unwrap_or_default()
                    .iter()
                    .copied(),
            )
            .emits(
                variant_names::<A::Event>()
                    .unwrap_or_default()
                    .iter()
                    .copied(),
            )
    }
}

impl Policy {
    /// The board's element for policy `P`: named [`NAME`](crate::projection::Policy::NAME),
    /// triggered by its [`TRIGGERED_BY`](crate::projection::Policy::TRIGGERED_BY) events and
    /// issuing its [`ISSUES`](crate::projection::Policy::ISSUES) commands.
    pub fn of<P: crate::projection::Policy>() -> Self {
        Policy::new(P::NAME)
            .triggered_by(P::TRIGGERED_BY.iter().copied())
            .issues(P::ISSUES.iter().copied())
    }
}

impl ModelBuilder {
    /// Adds the element of aggregate type `A` ([`Aggregate::of`]).
    pub fn aggregate_of<A: crate::Aggregate>(self) -> Self {
        self.element(Aggregate::of::<A>())
    }

    /// Adds the element of policy `P` ([`Policy::of`]).
    pub fn policy_of<P: crate::projection::Policy>(self) -> Self {
        self.element(Policy::of::<P>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn variant_names_come_from_serde_and_only_for_enums() {
        #[derive(Deserialize)]
        #[allow(dead_code)]
        enum E {
            A,
            B(i64),
            #[serde(rename = "Cee")]
            C {
                x: i64,
            },
        }
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct S {
            a: i64,
        }
        assert_eq!(variant_names::<E>(), Some(&["A", "B", "Cee"][..]));
        assert_eq!(variant_names::<S>(), None);
        assert_eq!(variant_names::<i64>(), None);
    }
}
