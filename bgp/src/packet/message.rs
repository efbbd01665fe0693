//! Framing and the small messages: KEEPALIVE, NOTIFICATION, ROUTE-REFRESH.

use super::error::{code, subcode, DecodeError, EncodeError};
use super::open::Open;
use super::reader::Reader;
use super::update::Update;
use super::{Context, HEADER_LEN, MAX_MESSAGE_LEN};

pub const TYPE_OPEN: u8 = 1;
pub const TYPE_UPDATE: u8 = 2;
pub const TYPE_NOTIFICATION: u8 = 3;
pub const TYPE_KEEPALIVE: u8 = 4;
pub const TYPE_ROUTE_REFRESH: u8 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
#[expect(
    clippy::large_enum_variant,
    reason = "a few messages per session per second; boxing UPDATE buys nothing"
)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: Vec<u8>) -> Self {
        Notification {
            code,
            subcode,
            data,
        }
    }

    /// Cease/Administrative Shutdown with an RFC 9003 shutdown communication.
    pub fn shutdown(message: &str) -> Self {
        let mut msg = message.as_bytes();
        msg = &msg[..msg.len().min(255)];
        // Cut on a char boundary so the peer sees valid UTF-8.
        while std::str::from_utf8(msg).is_err() {
            msg = &msg[..msg.len() - 1];
        }
        let mut data = vec![msg.len() as u8];
        data.extend_from_slice(msg);
        Notification::new(code::CEASE, subcode::ADMINISTRATIVE_SHUTDOWN, data)
    }

    /// The RFC 9003 shutdown communication of a Cease 2/4 NOTIFICATION, if any.
    pub fn shutdown_message(&self) -> Option<&str> {
        if self.code != code::CEASE
            || !matches!(
                self.subcode,
                subcode::ADMINISTRATIVE_SHUTDOWN | subcode::ADMINISTRATIVE_RESET
            )
        {
            return None;
        }
        let (&len, rest) = self.data.split_first()?;
        std::str::from_utf8(rest.get(..len as usize)?).ok()
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match (self.code, self.subcode) {
            (1, 1) => "Message header error: connection not synchronized",
            (1, 2) => "Message header error: bad message length",
            (1, 3) => "Message header error: bad message type",
            (1, _) => "Message header error",
            (2, 1) => "OPEN error: unsupported version number",
            (2, 2) => "OPEN error: bad peer AS",
            (2, 3) => "OPEN error: bad BGP identifier",
            (2, 4) => "OPEN error: unsupported optional parameter",
            (2, 6) => "OPEN error: unacceptable hold time",
            (2, 7) => "OPEN error: unsupported capability",
            (2, _) => "OPEN error",
            (3, _) => "UPDATE error",
            (4, _) => "Hold timer expired",
            (5, _) => "Finite state machine error",
            (6, 1) => "Cease: maximum number of prefixes reached",
            (6, 2) => "Cease: administrative shutdown",
            (6, 3) => "Cease: peer de-configured",
            (6, 4) => "Cease: administrative reset",
            (6, 5) => "Cease: connection rejected",
            (6, 6) => "Cease: other configuration change",
            (6, 7) => "Cease: connection collision resolution",
            (6, 8) => "Cease: out of resources",
            (6, 9) => "Cease: hard reset",
            (6, _) => "Cease",
            (7, _) => "ROUTE-REFRESH error",
            _ => "unknown error",
        };
        write!(f, "{name} ({}/{})", self.code, self.subcode)?;
        if let Some(m) = self.shutdown_message() {
            write!(f, ": \"{m}\"")?;
        }
        Ok(())
    }
}

/// ROUTE-REFRESH (RFC 2918; `subtype` from RFC 7313, 0 = normal request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRefresh {
    pub afi: u16,
    pub subtype: u8,
    pub safi: u8,
}

/// Given the bytes received so far, the length of the first whole message, `Ok(None)` when more
/// bytes are needed, or the header error to send when the stream cannot be framed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16].iter().any(|&b| b != 0xff) {
        return Err(DecodeError::new(
            code::MESSAGE_HEADER,
            subcode::CONNECTION_NOT_SYNCHRONIZED,
            "marker is not all ones",
        ));
    }
    let len = u16::from_be_bytes([buf[16], buf[17]]);
    if (len as usize) < HEADER_LEN || len as usize > MAX_MESSAGE_LEN {
        return Err(DecodeError::header_length(len));
    }
    Ok((buf.len() >= len as usize).then_some(len as usize))
}

impl Message {
    /// Decodes exactly one message occupying all of `buf` (as framed by [`frame_len`]).
    pub fn decode(buf: &[u8], ctx: &Context) -> Result<Message, DecodeError> {
        let len = match frame_len(buf)? {
            Some(len) if len == buf.len() => len,
            _ => {
                let field = if buf.len() >= 18 {
                    u16::from_be_bytes([buf[16], buf[17]])
                } else {
                    buf.len() as u16
                };
                return Err(DecodeError::header_length(field));
            }
        };
        let kind = buf[18];
        let body = &buf[HEADER_LEN..len];
        let min_len = match kind {
            TYPE_OPEN => 29,
            TYPE_UPDATE => 23,
            TYPE_NOTIFICATION => 21,
            TYPE_KEEPALIVE => 19,
            TYPE_ROUTE_REFRESH => 23,
            _ => {
                return Err(DecodeError::new(
                    code::MESSAGE_HEADER,
                    subcode::BAD_MESSAGE_TYPE,
                    "unknown message type",
                )
                .with_data(&[kind]))
            }
        };
        let bad_len = (len < min_len)
            || (kind == TYPE_KEEPALIVE && len != 19)
            || (kind == TYPE_ROUTE_REFRESH && len != 23);
        if bad_len {
            return Err(DecodeError::header_length(len as u16));
        }
        match kind {
            TYPE_OPEN => Open::decode(body).map(Message::Open),
            TYPE_UPDATE => Update::decode(body, ctx).map(Message::Update),
            TYPE_NOTIFICATION => {
                let mut r = Reader::new(body);
                let (Some(code), Some(subcode)) = (r.u8(), r.u8()) else {
                    return Err(DecodeError::header_length(len as u16));
                };
                Ok(Message::Notification(Notification {
                    code,
                    subcode,
                    data: r.rest().to_vec(),
                }))
            }
            TYPE_KEEPALIVE => Ok(Message::Keepalive),
            _ => {
                let mut r = Reader::new(body);
                let (Some(afi), Some(subtype), Some(safi)) = (r.u16(), r.u8(), r.u8()) else {
                    return Err(DecodeError::header_length(len as u16));
                };
                Ok(Message::RouteRefresh(RouteRefresh { afi, subtype, safi }))
            }
        }
    }

    /// Appends the encoded message to `out`. On error `out` is left as it was.
    pub fn encode(&self, ctx: &Context, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        out.extend_from_slice(&[0xff; 16]);
        out.extend_from_slice(&[0, 0, self.type_code()]);
        let body = match self {
            Message::Open(o) => o.encode_body(out),
            Message::Update(u) => u.encode_body(ctx, out),
            Message::Notification(n) => {
                out.extend_from_slice(&[n.code, n.subcode]);
                out.extend_from_slice(&n.data);
                Ok(())
            }
            Message::Keepalive => Ok(()),
            Message::RouteRefresh(rr) => {
                out.extend_from_slice(&rr.afi.to_be_bytes());
                out.extend_from_slice(&[rr.subtype, rr.safi]);
                Ok(())
            }
        };
        let len = out.len() - start;
        let result = body.and_then(|()| {
            if len > MAX_MESSAGE_LEN {
                Err(EncodeError::TooLong {
                    kind: self.kind_name(),
                    len,
                })
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                out[start + 16..start + 18].copy_from_slice(&(len as u16).to_be_bytes());
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Convenience: the encoded message as a fresh buffer.
    pub fn to_bytes(&self, ctx: &Context) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(ctx, &mut out)?;
        Ok(out)
    }

    pub fn type_code(&self) -> u8 {
        match self {
            Message::Open(_) => TYPE_OPEN,
            Message::Update(_) => TYPE_UPDATE,
            Message::Notification(_) => TYPE_NOTIFICATION,
            Message::Keepalive => TYPE_KEEPALIVE,
            Message::RouteRefresh(_) => TYPE_ROUTE_REFRESH,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Open(_) => "OPEN",
            Message::Update(_) => "UPDATE",
            Message::Notification(_) => "NOTIFICATION",
            Message::Keepalive => "KEEPALIVE",
            Message::RouteRefresh(_) => "ROUTE-REFRESH",
        }
    }
}
