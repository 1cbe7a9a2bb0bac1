//! Read-only stream inspection for tools (the `aether` CLI): a stream's bounds, and which
//! subjects it holds with how many messages each. Inherent methods of [`NatsBroker`], not part
//! of the [`Broker`](crate::broker::Broker) trait: the store never needs them.

use std::collections::BTreeMap;

use futures::TryStreamExt;

use super::NatsBroker;
use super::errors::{Op, map_error};
use crate::broker::BrokerError;
use crate::broker::subject::validate_pattern;

/// A stream's size and bounds, as its leader reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamState {
    /// Messages stored.
    pub messages: u64,
    /// Sequence of the first message still stored (sequences before it expired or were never
    /// written; 0 in an empty stream that never held a message).
    pub first_sequence: u64,
    /// Sequence of the last message ever stored (0 if none): the next append gets a larger one.
    pub last_sequence: u64,
    /// Distinct subjects with at least one stored message.
    pub subjects: u64,
}

impl NatsBroker {
    /// The state of `stream`: message count, first and last sequence, subject count.
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] when the stream does not exist; other broker failures.
    pub async fn stream_state(&self, stream: &str) -> Result<StreamState, BrokerError> {
        let op = Op::Read { stream };
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| map_error(&op, &e))?;
        let info = handle.get_info().await.map_err(|e| map_error(&op, &e))?;
        Ok(StreamState {
            messages: info.state.messages,
            first_sequence: info.state.first_sequence,
            last_sequence: info.state.last_sequence,
            subjects: info.state.subjects_count,
        })
    }

    /// Every subject of `stream` matching `filter` (wildcards allowed) that holds messages, with
    /// how many it holds. Asked of the stream's leader through stream info with subject details,
    /// page by page (the server sends at most 100,000 subjects per answer), so a stream with
    /// many subjects is listed whole.
    ///
    /// # Errors
    /// [`BrokerError::NotFound`] when the stream does not exist; an invalid `filter`; other
    /// broker failures.
    pub async fn subjects(
        &self,
        stream: &str,
        filter: &str,
    ) -> Result<BTreeMap<String, u64>, BrokerError> {
        validate_pattern(filter)?;
        let op = Op::Read { stream };
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| map_error(&op, &e))?;
        let mut pages = handle
            .info_with_subjects(filter)
            .await
            .map_err(|e| map_error(&op, &e))?;
        let mut subjects = BTreeMap::new();
        while let Some((subject, count)) = pages.try_next().await.map_err(|e| map_error(&op, &e))? {
            subjects.insert(subject, count as u64);
        }
        Ok(subjects)
    }
}
