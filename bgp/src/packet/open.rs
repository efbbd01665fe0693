//! OPEN (RFC 4271 §4.2) with capabilities (RFC 5492) and extended optional parameters
//! (RFC 9072: decoded in either form; encoded in the base form up to 255 bytes of parameters,
//! in the extended form beyond, so whatever decodes also encodes).

use std::net::Ipv4Addr;

use super::error::{code, subcode, DecodeError, EncodeError};
use super::reader::Reader;

pub const BGP_VERSION: u8 = 4;
const PARAM_CAPABILITIES: u8 = 2;

pub const CAP_MULTIPROTOCOL: u8 = 1;
pub const CAP_ROUTE_REFRESH: u8 = 2;
pub const CAP_GRACEFUL_RESTART: u8 = 64;
pub const CAP_FOUR_OCTET_AS: u8 = 65;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    /// The 2-octet "My Autonomous System" field (AS_TRANS when our AS needs 4 octets).
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// RFC 4760.
    Multiprotocol { afi: u16, safi: u8 },
    /// RFC 2918.
    RouteRefresh,
    /// RFC 4724.
    GracefulRestart(GracefulRestart),
    /// RFC 6793.
    FourOctetAs(u32),
    /// Anything else, kept as received (we never fail on an unknown capability).
    Unknown { code: u8, data: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestart {
    /// R bit: the sender has restarted.
    pub restart_state: bool,
    /// N bit (RFC 8538): the sender supports the notification extension.
    pub notification: bool,
    /// Seconds (12 bits) the peer should keep our routes while we restart.
    pub restart_time: u16,
    pub families: Vec<GrFamily>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrFamily {
    pub afi: u16,
    pub safi: u8,
    /// F bit: forwarding state was preserved across the restart.
    pub forwarding_preserved: bool,
}

impl Open {
    /// The peer's AS: the 4-octet capability if present, else the 2-octet field.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(asn) => Some(*asn),
                _ => None,
            })
            .unwrap_or(self.my_as as u32)
    }

    pub fn has_four_octet_as(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
    }

    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }

    /// AFI/SAFI pairs of the multiprotocol capabilities. RFC 4760 §8: a speaker without any
    /// is taken to speak IPv4 unicast only.
    pub fn families(&self) -> Vec<(u16, u8)> {
        let mp: Vec<_> = self
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol { afi, safi } => Some((*afi, *safi)),
                _ => None,
            })
            .collect();
        if mp.is_empty() {
            vec![(super::AFI_IPV4, super::SAFI_UNICAST)]
        } else {
            mp
        }
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Open, DecodeError> {
        let open_err = |sub, reason| DecodeError::new(code::OPEN_MESSAGE, sub, reason);
        let mut r = Reader::new(body);
        let short = || DecodeError::header_length((body.len() + super::HEADER_LEN) as u16);
        let version = r.u8().ok_or_else(short)?;
        if version != BGP_VERSION {
            return Err(
                open_err(subcode::UNSUPPORTED_VERSION, "unsupported BGP version")
                    .with_data(&(BGP_VERSION as u16).to_be_bytes()),
            );
        }
        let my_as = r.u16().ok_or_else(short)?;
        let hold_time = r.u16().ok_or_else(short)?;
        if hold_time == 1 || hold_time == 2 {
            return Err(open_err(
                subcode::UNACCEPTABLE_HOLD_TIME,
                "hold time of 1 or 2 seconds",
            ));
        }
        let bgp_id = Ipv4Addr::from(r.u32().ok_or_else(short)?);
        if bgp_id.is_unspecified() {
            return Err(open_err(subcode::BAD_BGP_IDENTIFIER, "BGP identifier is 0"));
        }
        let opt_len = r.u8().ok_or_else(short)?;
        let bad_params = || open_err(0, "optional parameters overrun the message");
        // RFC 9072: a non-extended length of 255 followed by a parameter type of 255 announces
        // 2-byte lengths.
        let extended = opt_len == 255 && r.rest().first() == Some(&255);
        let params_len = if extended {
            r.u8();
            r.u16().ok_or_else(bad_params)? as usize
        } else {
            opt_len as usize
        };
        let params = r.take(params_len).ok_or_else(bad_params)?;
        if !r.is_empty() {
            return Err(open_err(0, "bytes after the optional parameters"));
        }
        let mut p = Reader::new(params);
        let mut capabilities = Vec::new();
        while !p.is_empty() {
            let ptype = p.u8().ok_or_else(bad_params)?;
            let plen = if extended {
                p.u16()
            } else {
                p.u8().map(u16::from)
            };
            let pval = p
                .take(plen.ok_or_else(bad_params)? as usize)
                .ok_or_else(bad_params)?;
            if ptype != PARAM_CAPABILITIES {
                return Err(open_err(
                    subcode::UNSUPPORTED_OPTIONAL_PARAMETER,
                    "unsupported optional parameter",
                ));
            }
            decode_capabilities(pval, &mut capabilities)?;
        }
        Ok(Open {
            my_as,
            hold_time,
            bgp_id,
            capabilities,
        })
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(BGP_VERSION);
        out.extend_from_slice(&self.my_as.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.bgp_id.octets());
        // RFC 9072 §2: the base encoding while the parameters fit its 1-byte length (255 is
        // unambiguous: our first parameter type is 2, never the 255 that announces the extended
        // form), else the extended one (length 255, type 255, a 2-byte length, and 2-byte
        // parameter lengths), which the decoder reads the same way.
        let len_at = out.len();
        out.push(0);
        // A capability too long for a 1-byte parameter length also needs the extended form.
        if self.encode_params(out, false).is_ok() {
            let params_len = out.len() - len_at - 1;
            if params_len <= usize::from(u8::MAX) {
                out[len_at] = params_len as u8;
                return Ok(());
            }
        }
        out.truncate(len_at);
        out.extend_from_slice(&[255, 255, 0, 0]);
        self.encode_params(out, true)?;
        let params_len = out.len() - len_at - 4;
        let params_len = u16::try_from(params_len).map_err(|_| EncodeError::FieldTooLong {
            what: "OPEN optional parameters",
            len: params_len,
        })?;
        out[len_at + 2..len_at + 4].copy_from_slice(&params_len.to_be_bytes());
        Ok(())
    }

    /// One capabilities parameter per capability, as BIRD, FRR and GoBGP send them; parameter
    /// lengths of 2 bytes when `extended` (RFC 9072), else 1.
    fn encode_params(&self, out: &mut Vec<u8>, extended: bool) -> Result<(), EncodeError> {
        for cap in &self.capabilities {
            out.push(PARAM_CAPABILITIES);
            let plen_at = out.len();
            out.extend_from_slice(if extended { &[0, 0] } else { &[0] });
            let (cap_code, data_at) = (cap.code(), out.len() + 2);
            out.extend_from_slice(&[cap_code, 0]);
            cap.encode_value(out);
            let clen = out.len() - data_at;
            // The capability's own length is 1 byte in either form; so is the parameter's in
            // the base form.
            if clen > 255 || (!extended && clen + 2 > 255) {
                return Err(EncodeError::FieldTooLong {
                    what: "capability",
                    len: clen,
                });
            }
            out[data_at - 1] = clen as u8;
            if extended {
                out[plen_at..plen_at + 2].copy_from_slice(&((clen + 2) as u16).to_be_bytes());
            } else {
                out[plen_at] = (clen + 2) as u8;
            }
        }
        Ok(())
    }
}

fn decode_capabilities(mut buf: &[u8], caps: &mut Vec<Capability>) -> Result<(), DecodeError> {
    let bad = |reason| DecodeError::new(code::OPEN_MESSAGE, 0, reason);
    while !buf.is_empty() {
        let mut r = Reader::new(buf);
        let (Some(code), Some(len)) = (r.u8(), r.u8()) else {
            return Err(bad("truncated capability header"));
        };
        let value = r
            .take(len as usize)
            .ok_or_else(|| bad("capability overruns its parameter"))?;
        buf = r.rest();
        let mut v = Reader::new(value);
        let cap = match code {
            CAP_MULTIPROTOCOL => {
                if len != 4 {
                    return Err(bad("multiprotocol capability length is not 4"));
                }
                let afi = v.u16().unwrap_or_default();
                v.u8();
                let safi = v.u8().unwrap_or_default();
                Capability::Multiprotocol { afi, safi }
            }
            CAP_ROUTE_REFRESH => {
                if len != 0 {
                    return Err(bad("route refresh capability length is not 0"));
                }
                Capability::RouteRefresh
            }
            CAP_FOUR_OCTET_AS => {
                if len != 4 {
                    return Err(bad("4-octet AS capability length is not 4"));
                }
                Capability::FourOctetAs(v.u32().unwrap_or_default())
            }
            CAP_GRACEFUL_RESTART => {
                if len < 2 || (len - 2) % 4 != 0 {
                    return Err(bad("graceful restart capability length is not 2 + 4n"));
                }
                let flags_time = v.u16().unwrap_or_default();
                let mut families = Vec::new();
                while let (Some(afi), Some(safi), Some(flags)) = (v.u16(), v.u8(), v.u8()) {
                    families.push(GrFamily {
                        afi,
                        safi,
                        forwarding_preserved: flags & 0x80 != 0,
                    });
                }
                Capability::GracefulRestart(GracefulRestart {
                    restart_state: flags_time & 0x8000 != 0,
                    notification: flags_time & 0x4000 != 0,
                    restart_time: flags_time & 0x0fff,
                    families,
                })
            }
            _ => Capability::Unknown {
                code,
                data: value.to_vec(),
            },
        };
        caps.push(cap);
    }
    Ok(())
}

impl Capability {
    pub fn code(&self) -> u8 {
        match self {
            Capability::Multiprotocol { .. } => CAP_MULTIPROTOCOL,
            Capability::RouteRefresh => CAP_ROUTE_REFRESH,
            Capability::GracefulRestart(_) => CAP_GRACEFUL_RESTART,
            Capability::FourOctetAs(_) => CAP_FOUR_OCTET_AS,
            Capability::Unknown { code, .. } => *code,
        }
    }

    fn encode_value(&self, out: &mut Vec<u8>) {
        match self {
            Capability::Multiprotocol { afi, safi } => {
                out.extend_from_slice(&afi.to_be_bytes());
                out.extend_from_slice(&[0, *safi]);
            }
            Capability::RouteRefresh => {}
            Capability::GracefulRestart(gr) => {
                let mut flags_time = gr.restart_time & 0x0fff;
                if gr.restart_state {
                    flags_time |= 0x8000;
                }
                if gr.notification {
                    flags_time |= 0x4000;
                }
                out.extend_from_slice(&flags_time.to_be_bytes());
                for f in &gr.families {
                    out.extend_from_slice(&f.afi.to_be_bytes());
                    out.extend_from_slice(&[f.safi, if f.forwarding_preserved { 0x80 } else { 0 }]);
                }
            }
            Capability::FourOctetAs(asn) => out.extend_from_slice(&asn.to_be_bytes()),
            Capability::Unknown { data, .. } => out.extend_from_slice(data),
        }
    }
}
