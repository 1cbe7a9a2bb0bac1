//! The request/response protocol between simulated clients and the broker host.

use bytes::Bytes;

use aether::broker::{
    AppendOptions, BrokerError, Headers, KvConfig, KvEntry, Message, ReadFrom, StoredMessage,
    StreamConfig,
};

#[derive(Debug)]
pub(super) enum Request {
    Hello {
        node: String,
        session: u64,
    },
    Ping,
    EnsureStream(StreamConfig),
    Append {
        subject: String,
        headers: Headers,
        payload: Bytes,
        options: AppendOptions,
    },
    Last {
        stream: String,
        subject: String,
        from: ReadFrom,
    },
    Next {
        stream: String,
        subject: String,
        from_sequence: u64,
        from: ReadFrom,
    },
    Read {
        stream: String,
        subject: String,
        from_sequence: u64,
    },
    Publish {
        subject: String,
        headers: Headers,
        payload: Bytes,
    },
    Subscribe {
        sid: u64,
        pattern: String,
    },
    Unsubscribe {
        sid: u64,
    },
    /// Subscribe `sid` to `inbox`, then publish with `reply = inbox`.
    Ask {
        sid: u64,
        inbox: String,
        subject: String,
        headers: Headers,
        payload: Bytes,
    },
    KvEnsure(KvConfig),
    KvGet {
        bucket: String,
        key: String,
    },
    KvCreate {
        bucket: String,
        key: String,
        value: Bytes,
    },
    KvUpdate {
        bucket: String,
        key: String,
        value: Bytes,
        revision: u64,
    },
    KvPut {
        bucket: String,
        key: String,
        value: Bytes,
    },
    KvDelete {
        bucket: String,
        key: String,
    },
    KvEntries {
        bucket: String,
    },
    KvWatch {
        sid: u64,
        bucket: String,
        pattern: String,
    },
}

impl Request {
    pub(super) fn operation(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Ping => "ping",
            Request::EnsureStream(_) => "ensure_stream",
            Request::Append { .. } => "append",
            Request::Last { .. } => "last",
            Request::Next { .. } => "next",
            Request::Read { .. } => "read",
            Request::Publish { .. } => "publish",
            Request::Subscribe { .. } => "subscribe",
            Request::Unsubscribe { .. } => "unsubscribe",
            Request::Ask { .. } => "request",
            Request::KvEnsure(_) => "kv_ensure",
            Request::KvGet { .. } => "kv_get",
            Request::KvCreate { .. } => "kv_create",
            Request::KvUpdate { .. } => "kv_update",
            Request::KvPut { .. } => "kv_put",
            Request::KvDelete { .. } => "kv_delete",
            Request::KvEntries { .. } => "kv_entries",
            Request::KvWatch { .. } => "kv_watch",
        }
    }

    /// Reads only the stream leader answers (`ReadFrom::Leader`).
    pub(super) fn is_leader_read(&self) -> bool {
        matches!(
            self,
            Request::Last {
                from: ReadFrom::Leader,
                ..
            } | Request::Next {
                from: ReadFrom::Leader,
                ..
            }
        )
    }

    /// Writes a replicated stream commits through its leader (stream and bucket creation
    /// included).
    pub(super) fn is_replicated_write(&self) -> bool {
        self.is_write() || matches!(self, Request::EnsureStream(_) | Request::KvEnsure(_))
    }

    /// Writes whose reply the host may drop after committing (ambiguous outcome).
    pub(super) fn is_write(&self) -> bool {
        matches!(
            self,
            Request::Append { .. }
                | Request::KvCreate { .. }
                | Request::KvUpdate { .. }
                | Request::KvPut { .. }
                | Request::KvDelete { .. }
        )
    }
}

#[derive(Debug)]
pub(super) enum Response {
    Unit,
    Ack { sequence: u64, duplicate: bool },
    Stored(Option<StoredMessage>),
    StoredList(Vec<StoredMessage>),
    Entry(Option<KvEntry>),
    Entries(Vec<KvEntry>),
    Revision(u64),
    Error(BrokerError),
}

#[derive(Debug)]
pub(super) enum Frame {
    /// A request, stamped with the true time the client sent it (for the checkers: what a node
    /// did is judged by when it decided to, not when the network delivered it).
    Req {
        id: u64,
        sent_at: std::time::Duration,
        body: Request,
    },
    Resp {
        id: u64,
        body: Response,
    },
    Msg {
        sid: u64,
        message: Message,
    },
    Kv {
        sid: u64,
        entry: KvEntry,
    },
}
