//! BGP-4 message codec (RFC 4271, RFC 4760, RFC 5492, RFC 6793, RFC 4724, RFC 7606).
//!
//! Layout: [`message`] frames and decodes whole messages, [`open`] the OPEN message and its
//! capabilities, [`update`] the UPDATE message and its path attributes, [`error`] the decode
//! errors, each carrying the NOTIFICATION (code, subcode, data) that the FSM sends back.
//!
//! Invariants:
//! - decoding never panics and never reads past the buffer: every length is checked against
//!   what is left before it is used (the fuzz target in `bgp/fuzz/` and the seeded garbage test
//!   hold us to it);
//! - an error that RFC 7606 lets us survive (a malformed attribute whose NLRI can still be
//!   located) decodes to an [`update::Update`] with [`update::Update::malformed`] set
//!   ("treat-as-withdraw" / "attribute-discard"), not to an error: the session stays up;
//! - encoding a message we built never exceeds [`MAX_MESSAGE_LEN`]; the caller splits route
//!   sets into several UPDATEs (see [`update::pack_updates`]).

pub mod error;
pub mod message;
pub mod open;
pub mod update;

mod reader;

pub use error::{DecodeError, EncodeError};
pub use message::{frame_len, Message, Notification, RouteRefresh};
pub use open::{Capability, GrFamily, GracefulRestart, Open};
pub use update::{
    AsPath, AsSegment, Community, Malformed, MpReach, MpUnreach, Origin, PathAttributes,
    RawAttribute, Update,
};

/// Header: 16-byte marker, 2-byte length, 1-byte type.
pub const HEADER_LEN: usize = 19;
/// RFC 4271 maximum message size (we do not negotiate RFC 8654 extended messages).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// `AS_TRANS` (RFC 6793): our 2-octet stand-in when the peer lacks 4-octet ASN support.
pub const AS_TRANS: u16 = 23456;

/// Address family identifiers (IANA).
pub const AFI_IPV4: u16 = 1;
pub const AFI_IPV6: u16 = 2;
/// Subsequent address family identifier for unicast.
pub const SAFI_UNICAST: u8 = 1;

/// The two address families we speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4Unicast, Family::Ipv6Unicast];

    pub fn afi_safi(self) -> (u16, u8) {
        match self {
            Family::Ipv4Unicast => (AFI_IPV4, SAFI_UNICAST),
            Family::Ipv6Unicast => (AFI_IPV6, SAFI_UNICAST),
        }
    }

    pub fn from_afi_safi(afi: u16, safi: u8) -> Option<Family> {
        match (afi, safi) {
            (AFI_IPV4, SAFI_UNICAST) => Some(Family::Ipv4Unicast),
            (AFI_IPV6, SAFI_UNICAST) => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }

    pub fn of(net: &ipnet::IpNet) -> Family {
        match net {
            ipnet::IpNet::V4(_) => Family::Ipv4Unicast,
            ipnet::IpNet::V6(_) => Family::Ipv6Unicast,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Ipv4Unicast => "ipv4-unicast",
            Family::Ipv6Unicast => "ipv6-unicast",
        })
    }
}

/// What decoding needs to know about the session (negotiated in OPEN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// Both sides advertised the 4-octet AS capability: AS_PATH carries 4-byte ASNs.
    pub four_octet_as: bool,
}

impl Default for Context {
    fn default() -> Self {
        Context {
            four_octet_as: true,
        }
    }
}
