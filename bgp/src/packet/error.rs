//! Decode errors carry the NOTIFICATION to send (RFC 4271 §6); encode errors are our own bugs
//! or oversize inputs, reported instead of sending a broken message.

/// NOTIFICATION error codes (RFC 4271 §4.5, RFC 7313).
pub mod code {
    pub const MESSAGE_HEADER: u8 = 1;
    pub const OPEN_MESSAGE: u8 = 2;
    pub const UPDATE_MESSAGE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    pub const ROUTE_REFRESH: u8 = 7;
}

/// NOTIFICATION subcodes, per code.
pub mod subcode {
    // Message header errors.
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    pub const BAD_MESSAGE_TYPE: u8 = 3;
    // OPEN message errors.
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;
    // UPDATE message errors.
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE: u8 = 2;
    pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    // FSM errors (RFC 6608).
    pub const UNEXPECTED_IN_OPENSENT: u8 = 1;
    pub const UNEXPECTED_IN_OPENCONFIRM: u8 = 2;
    pub const UNEXPECTED_IN_ESTABLISHED: u8 = 3;
    // Cease (RFC 4486).
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    pub const PEER_DECONFIGURED: u8 = 3;
    pub const ADMINISTRATIVE_RESET: u8 = 4;
    pub const CONNECTION_REJECTED: u8 = 5;
    pub const CONNECTION_COLLISION_RESOLUTION: u8 = 7;
    // Route-refresh message errors (RFC 7313).
    pub const INVALID_MESSAGE_LENGTH: u8 = 1;
}

/// A message we cannot accept. `code`/`subcode`/`data` are the NOTIFICATION to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (NOTIFICATION {code}/{subcode})")]
pub struct DecodeError {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
    pub reason: &'static str,
}

impl DecodeError {
    pub(crate) fn new(code: u8, subcode: u8, reason: &'static str) -> Self {
        DecodeError {
            code,
            subcode,
            data: Vec::new(),
            reason,
        }
    }

    pub(crate) fn with_data(mut self, data: &[u8]) -> Self {
        self.data = data.to_vec();
        self
    }

    pub(crate) fn header_length(len: u16) -> Self {
        DecodeError::new(
            code::MESSAGE_HEADER,
            subcode::BAD_MESSAGE_LENGTH,
            "bad message length",
        )
        .with_data(&len.to_be_bytes())
    }

    pub(crate) fn attr_list(reason: &'static str) -> Self {
        DecodeError::new(
            code::UPDATE_MESSAGE,
            subcode::MALFORMED_ATTRIBUTE_LIST,
            reason,
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("encoded {kind} message is {len} bytes, more than the 4096 allowed")]
    TooLong { kind: &'static str, len: usize },
    #[error("{what} does not fit its length field ({len} bytes)")]
    FieldTooLong { what: &'static str, len: usize },
}
