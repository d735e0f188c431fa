//! Reading a channel's history out of the stream with direct gets (JetStream 2.9+:
//! `allow_direct`), one message per round trip: "the last message of this subject", then
//! "the next message of this subject at or after sequence N".
//!
//! Why not a consumer: a consumer per read costs a create and a delete on the server, and a
//! page is usually a handful of messages (what a client missed while it reconnected). A
//! direct get reads the stored message itself, so nothing here can be newer than what the
//! stream holds (contract item 5).

use std::sync::Arc;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind};
use serde_json::value::RawValue;

use super::connection::{bounded, unavailable, Connection, Epoch, REQUEST_TIMEOUT};
use super::publisher::PREV_HEADER;
use crate::broker::{self, BrokerError, History, Page};
use crate::protocol::{ChannelName, Offset, Publication};

/// The stream sequence of the subject's last retained message, 0 when it has none.
pub(super) async fn last_sequence(
    connection: &Arc<Connection>,
    subject: &str,
) -> Result<u64, BrokerError> {
    let stream = connection.stream().await?;
    Ok(last_message(&stream, subject)
        .await?
        .map_or(0, |m| m.sequence))
}

async fn last_message(
    stream: &stream::Stream<()>,
    subject: &str,
) -> Result<Option<StreamMessage>, BrokerError> {
    bounded(async {
        match stream.direct_get_last_for_subject(subject).await {
            Ok(message) => Ok(Some(message)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(direct_get_error(e)),
        }
    })
    .await
}

async fn next_message(
    stream: &stream::Stream<()>,
    subject: &str,
    from: u64,
) -> Result<Option<StreamMessage>, BrokerError> {
    bounded(async {
        match stream
            .direct_get_next_for_subject(subject, Some(from))
            .await
        {
            Ok(message) => Ok(Some(message)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(direct_get_error(e)),
        }
    })
    .await
}

fn direct_get_error(error: stream::DirectGetError) -> BrokerError {
    match error.kind() {
        DirectGetErrorKind::TimedOut => BrokerError::Timeout(REQUEST_TIMEOUT),
        _ => unavailable(error),
    }
}

/// The sequence of the channel's message before `message` (0: none), from [`PREV_HEADER`].
pub(super) fn prev_of(headers: Option<&async_nats::HeaderMap>) -> Option<u64> {
    headers?.get(PREV_HEADER)?.as_str().parse().ok()
}

/// Offsets of the stream's numbering: `base + sequence`; a previous sequence of 0 is none.
pub(super) fn offset(epoch: Epoch, sequence: u64) -> Offset {
    Offset(epoch.base + sequence)
}

fn prev_offset(epoch: Epoch, prev: u64) -> Option<Offset> {
    (prev != 0).then(|| offset(epoch, prev))
}

fn publication(
    channel: &ChannelName,
    epoch: Epoch,
    message: StreamMessage,
) -> Result<(Arc<Publication>, Option<Offset>), BrokerError> {
    let prev = prev_of(Some(&message.headers)).ok_or_else(|| {
        BrokerError::BadReply(format!(
            "message {} of {channel} has no {PREV_HEADER} header",
            message.sequence
        ))
    })?;
    let text = String::from_utf8(message.payload.to_vec())
        .map_err(|_| BrokerError::BadReply("history entry is not UTF-8".into()))?;
    let data = RawValue::from_string(text)
        .map_err(|e| BrokerError::BadReply(format!("history entry is not JSON: {e}")))?;
    Ok((
        Publication::new(channel.clone(), offset(epoch, message.sequence), data),
        prev_offset(epoch, prev),
    ))
}

/// One page of the channel's history after `since` (see [`History::from_log`]).
pub(super) async fn page(
    connection: &Arc<Connection>,
    channel: &ChannelName,
    since: Option<Offset>,
    page: Page,
) -> Result<History, BrokerError> {
    connection.check_up()?;
    let epoch = connection.epoch().await?;
    let stream = connection.stream().await?;
    let subject = connection.subjects.history(channel);
    let Some(last) = last_message(&stream, &subject).await? else {
        return Ok(History::from_log(
            Offset(0),
            None,
            since,
            None,
            Vec::new(),
            false,
        ));
    };
    let top = offset(epoch, last.sequence);
    let log = Some(broker::Epoch(epoch.base));
    let since_sequence = match since {
        None => return Ok(History::from_log(top, log, None, None, Vec::new(), false)),
        Some(since) if since >= top => {
            return Ok(History::from_log(
                top,
                log,
                Some(since),
                None,
                Vec::new(),
                false,
            ))
        }
        // From an older epoch (or 0): everything this log holds comes after it.
        Some(since) => since.0.saturating_sub(epoch.base),
    };
    let mut messages = Vec::new();
    let mut before_first = None;
    let mut bytes = 0usize;
    let mut more = false;
    let mut from = since_sequence + 1;
    while from <= last.sequence {
        let Some(message) = next_message(&stream, &subject, from).await? else {
            break;
        };
        let sequence = message.sequence;
        let size = message.payload.len();
        let full = messages.len() >= page.messages.get()
            || (!messages.is_empty() && bytes.saturating_add(size) > page.bytes.get());
        if full {
            more = true;
            break;
        }
        let (publication, prev) = publication(channel, epoch, message)?;
        if messages.is_empty() {
            before_first = prev;
        }
        bytes = bytes.saturating_add(size);
        messages.push(publication);
        from = sequence + 1;
    }
    Ok(History::from_log(
        top,
        log,
        since,
        before_first,
        messages,
        more,
    ))
}
