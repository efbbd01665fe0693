//! The conntrack snapshot: every worker's flows and the affinity table, written when the daemon
//! stops (and on `nodeplane ct save`) and read back when it starts, so that established
//! connections survive a restart or an upgrade with the backend they had.
//!
//! ```text
//!  offset  size  field
//!  0       8     magic "NPCTSNAP"
//!  8       4     format version (u32 LE), FORMAT_VERSION
//!  12      8     payload length in bytes (u64 LE)
//!  20      n     payload:
//!                  writer (u16 length + UTF-8: the writing build's version)
//!                  saved_unix_ms (u64), flow count (u32), affinity count (u32)
//!                  flows, then affinity entries, field by field (below)
//!  20+n    8     FNV-1a 64 of bytes 0..20+n (u64 LE)
//! ```
//!
//! All integers little-endian. An address is 17 bytes (family 4 or 6, then 16 bytes, an IPv4
//! address in the first 4 and zeros after). Timers are stored as *remaining* or *elapsed*
//! nanoseconds relative to the save, since a new process has a new monotonic clock.
//!
//! Decoding checks, in this order: magic ([`SnapshotError::BadMagic`]), version
//! ([`SnapshotError::ForeignVersion`]: a snapshot of another format is never guessed at),
//! length ([`SnapshotError::Truncated`]), checksum ([`SnapshotError::Checksum`]), then every
//! field ([`SnapshotError::Invalid`]). It builds a complete [`Snapshot`] or returns an error:
//! nothing reaches a table until the whole file decoded, so a bad file is never half-loaded.
//!
//! Fragment state is not saved: a held fragment waits at most the fragment timeout (seconds)
//! and its sender retransmits the datagram; a datagram whose first fragment was seen before
//! the stop loses its later fragments, as it would with any loss.

use std::fmt;

use crate::conntrack::{FlowState, Nat};
use crate::flow::{Addr, FlowKey};
use crate::policy::PolicyVerdict;
use crate::DropReason;

pub const MAGIC: [u8; 8] = *b"NPCTSNAP";
/// Bumped on any change of the layout above.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8;
const TRAILER_LEN: usize = 8;

/// One flow as saved: everything of a conntrack entry but its slot links and fast-path cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedFlow {
    pub orig: FlowKey,
    pub reply: FlowKey,
    pub state: FlowState,
    /// Bit 0: FIN seen from the originator, bit 1: from the replier.
    pub fins: u8,
    pub policy: PolicyVerdict,
    pub ended: Option<DropReason>,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub nat: Option<Nat>,
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Nanoseconds since the flow was created, at the save.
    pub age_ns: u64,
    /// Nanoseconds since its last packet, at the save.
    pub idle_ns: u64,
    /// Nanoseconds left before it expires, at the save (> 0).
    pub remaining_ns: u64,
}

/// One affinity entry: the client `client` of the service whose name hashes to `service`
/// (see `Pipeline::select_backend`) goes to `backend:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedAffinity {
    pub service: u64,
    pub client: Addr,
    pub backend: Addr,
    pub port: u16,
    pub remaining_ns: u64,
}

/// What one worker hands over for a snapshot (`Query::Save`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedPart {
    pub flows: Vec<SavedFlow>,
    pub affinity: Vec<SavedAffinity>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The version of the build that wrote it.
    pub writer: String,
    /// Wall-clock time of the save (milliseconds since the Unix epoch).
    pub saved_unix_ms: u64,
    pub flows: Vec<SavedFlow>,
    pub affinity: Vec<SavedAffinity>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("truncated: the file ends before its declared length")]
    Truncated,
    #[error("not a nodeplane conntrack snapshot (bad magic)")]
    BadMagic,
    #[error("snapshot format version {found}, this build reads version {FORMAT_VERSION} only")]
    ForeignVersion { found: u32 },
    #[error("checksum mismatch: the file is corrupt")]
    Checksum,
    #[error("invalid snapshot: {what}")]
    Invalid { what: String },
}

fn invalid(what: impl fmt::Display) -> SnapshotError {
    SnapshotError::Invalid {
        what: what.to_string(),
    }
}

/// FNV-1a, 64 bits: std only, and enough to catch a torn or bit-flipped file (not an attacker:
/// whoever can write `/var/lib/nodeplane` can write any snapshot).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Snapshot {
    /// An empty snapshot written by this build now.
    pub fn new(saved_unix_ms: u64) -> Snapshot {
        Snapshot {
            writer: env!("CARGO_PKG_VERSION").to_string(),
            saved_unix_ms,
            flows: Vec::new(),
            affinity: Vec::new(),
        }
    }

    /// Adds one worker's part. Affinity entries are per worker and may repeat across workers:
    /// the one with the most time left is kept.
    pub fn add(&mut self, part: SavedPart) {
        self.flows.extend(part.flows);
        for a in part.affinity {
            match self
                .affinity
                .iter_mut()
                .find(|b| b.service == a.service && b.client == a.client)
            {
                Some(b) if b.remaining_ns >= a.remaining_ns => {}
                Some(b) => *b = a,
                None => self.affinity.push(a),
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(64 + self.flows.len() * 200 + self.affinity.len() * 50);
        let writer = self.writer.as_bytes();
        let wlen = writer.len().min(usize::from(u16::MAX));
        p.extend_from_slice(&(wlen as u16).to_le_bytes());
        p.extend_from_slice(&writer[..wlen]);
        p.extend_from_slice(&self.saved_unix_ms.to_le_bytes());
        p.extend_from_slice(&(self.flows.len() as u32).to_le_bytes());
        p.extend_from_slice(&(self.affinity.len() as u32).to_le_bytes());
        for f in &self.flows {
            put_flow(&mut p, f);
        }
        for a in &self.affinity {
            put_addr(&mut p, &a.client);
            p.extend_from_slice(&a.service.to_le_bytes());
            put_addr(&mut p, &a.backend);
            p.extend_from_slice(&a.port.to_le_bytes());
            p.extend_from_slice(&a.remaining_ns.to_le_bytes());
        }
        let mut out = Vec::with_capacity(HEADER_LEN + p.len() + TRAILER_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(p.len() as u64).to_le_bytes());
        out.extend_from_slice(&p);
        let sum = fnv1a64(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Decodes a whole file (see the module docs for the order of the checks).
    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        if bytes.len() < MAGIC.len() {
            return Err(if MAGIC.starts_with(bytes) {
                SnapshotError::Truncated
            } else {
                SnapshotError::BadMagic
            });
        }
        if bytes[..8] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let mut r = Reader { b: bytes, at: 8 };
        let version = r.u32()?;
        if version != FORMAT_VERSION {
            return Err(SnapshotError::ForeignVersion { found: version });
        }
        let plen = r.u64()?;
        let end = usize::try_from(plen)
            .ok()
            .and_then(|n| n.checked_add(HEADER_LEN + TRAILER_LEN))
            .ok_or(SnapshotError::Truncated)?;
        if bytes.len() < end {
            return Err(SnapshotError::Truncated);
        }
        if bytes.len() > end {
            return Err(invalid(format_args!(
                "{} bytes after the checksum",
                bytes.len() - end
            )));
        }
        let body = &bytes[..end - TRAILER_LEN];
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&bytes[end - TRAILER_LEN..]);
        if fnv1a64(body) != u64::from_le_bytes(sum) {
            return Err(SnapshotError::Checksum);
        }
        // From here on a short read is a lie of the counts, not a truncated file.
        let mut r = Reader {
            b: body,
            at: HEADER_LEN,
        };
        let short = |_| invalid("the counts do not match the payload length");
        let wlen = usize::from(r.u16().map_err(short)?);
        let writer = std::str::from_utf8(r.take(wlen).map_err(short)?)
            .map_err(|_| invalid("writer is not UTF-8"))?
            .to_string();
        let saved_unix_ms = r.u64().map_err(short)?;
        let nflows = r.u32().map_err(short)? as usize;
        let naff = r.u32().map_err(short)? as usize;
        // Bounded by what the payload can hold, so a bad count cannot reserve gigabytes.
        let room = body.len() - r.at;
        let mut flows = Vec::with_capacity(nflows.min(room / 100));
        for i in 0..nflows {
            flows.push(
                get_flow(&mut r)
                    .map_err(|e| e.map_short(|| invalid("the counts do not match the payload")))
                    .map_err(|e| e.context(format_args!("flow {i}")))?,
            );
        }
        let mut affinity = Vec::with_capacity(naff.min(room / 40));
        for i in 0..naff {
            let a = (|| -> Result<SavedAffinity, SnapshotError> {
                let client = get_addr(&mut r)?;
                let service = r.u64()?;
                let backend = get_addr(&mut r)?;
                let port = r.u16()?;
                let remaining_ns = r.u64()?;
                if remaining_ns == 0 {
                    return Err(invalid("no time left"));
                }
                Ok(SavedAffinity {
                    service,
                    client,
                    backend,
                    port,
                    remaining_ns,
                })
            })()
            .map_err(|e| e.map_short(|| invalid("the counts do not match the payload")))
            .map_err(|e| e.context(format_args!("affinity entry {i}")))?;
            affinity.push(a);
        }
        if r.at != body.len() {
            return Err(invalid(format_args!(
                "{} payload bytes after the last entry",
                body.len() - r.at
            )));
        }
        Ok(Snapshot {
            writer,
            saved_unix_ms,
            flows,
            affinity,
        })
    }
}

impl SnapshotError {
    /// Inside a checksummed payload a short read means the counts are wrong.
    fn map_short(self, f: impl FnOnce() -> SnapshotError) -> SnapshotError {
        match self {
            SnapshotError::Truncated => f(),
            e => e,
        }
    }

    fn context(self, at: fmt::Arguments<'_>) -> SnapshotError {
        match self {
            SnapshotError::Invalid { what } => SnapshotError::Invalid {
                what: format!("{at}: {what}"),
            },
            e => e,
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self.at.checked_add(n).ok_or(SnapshotError::Truncated)?;
        let s = self.b.get(self.at..end).ok_or(SnapshotError::Truncated)?;
        self.at = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.arr::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
}

fn put_addr(p: &mut Vec<u8>, a: &Addr) {
    p.push(if a.v6 { 6 } else { 4 });
    p.extend_from_slice(&a.bytes);
}

fn get_addr(r: &mut Reader<'_>) -> Result<Addr, SnapshotError> {
    let fam = r.u8()?;
    let bytes: [u8; 16] = r.arr()?;
    match fam {
        6 => Ok(Addr::v6(bytes)),
        4 if bytes[4..].iter().all(|&b| b == 0) => {
            Ok(Addr::v4([bytes[0], bytes[1], bytes[2], bytes[3]]))
        }
        4 => Err(invalid("IPv4 address with bytes past its fourth")),
        n => Err(invalid(format_args!("address family {n}"))),
    }
}

fn put_key(p: &mut Vec<u8>, k: &FlowKey) {
    put_addr(p, &k.src);
    put_addr(p, &k.dst);
    p.extend_from_slice(&k.sport.to_le_bytes());
    p.extend_from_slice(&k.dport.to_le_bytes());
    p.push(k.proto);
}

fn get_key(r: &mut Reader<'_>) -> Result<FlowKey, SnapshotError> {
    let src = get_addr(r)?;
    let dst = get_addr(r)?;
    if src.v6 != dst.v6 {
        return Err(invalid("a flow key mixes IPv4 and IPv6"));
    }
    Ok(FlowKey {
        src,
        dst,
        sport: r.u16()?,
        dport: r.u16()?,
        proto: r.u8()?,
    })
}

const STATES: [FlowState; 7] = [
    FlowState::Open,
    FlowState::SynSent,
    FlowState::SynRecv,
    FlowState::Established,
    FlowState::FinWait,
    FlowState::Close,
    FlowState::TimeWait,
];
const VERDICTS: [PolicyVerdict; 4] = [
    PolicyVerdict::None,
    PolicyVerdict::Allow,
    PolicyVerdict::Deny,
    PolicyVerdict::Audit,
];

fn put_flow(p: &mut Vec<u8>, f: &SavedFlow) {
    put_key(p, &f.orig);
    put_key(p, &f.reply);
    let state = STATES.iter().position(|s| *s == f.state).unwrap_or(0);
    p.push(state as u8);
    p.push(f.fins);
    let policy = VERDICTS.iter().position(|v| *v == f.policy).unwrap_or(0);
    p.push(policy as u8);
    p.push(f.ended.map_or(0, |r| r as u8));
    p.extend_from_slice(&f.src_identity.to_le_bytes());
    p.extend_from_slice(&f.dst_identity.to_le_bytes());
    match &f.nat {
        None => p.push(0),
        Some(n) => {
            p.push(1);
            put_addr(p, &n.vip);
            p.extend_from_slice(&n.vip_port.to_le_bytes());
            put_addr(p, &n.backend);
            p.extend_from_slice(&n.backend_port.to_le_bytes());
            p.extend_from_slice(&n.service.to_le_bytes());
        }
    }
    for v in [
        f.packets[0],
        f.packets[1],
        f.bytes[0],
        f.bytes[1],
        f.age_ns,
        f.idle_ns,
        f.remaining_ns,
    ] {
        p.extend_from_slice(&v.to_le_bytes());
    }
}

fn get_flow(r: &mut Reader<'_>) -> Result<SavedFlow, SnapshotError> {
    let orig = get_key(r)?;
    let reply = get_key(r)?;
    if orig.proto != reply.proto {
        return Err(invalid("original and reply keys of different protocols"));
    }
    let state = r.u8()?;
    let state = *STATES
        .get(usize::from(state))
        .ok_or_else(|| invalid(format_args!("flow state {state}")))?;
    let fins = r.u8()?;
    if fins > 3 {
        return Err(invalid(format_args!("FIN bits {fins}")));
    }
    let policy = r.u8()?;
    let policy = *VERDICTS
        .get(usize::from(policy))
        .ok_or_else(|| invalid(format_args!("policy verdict {policy}")))?;
    let ended = match r.u8()? {
        0 => None,
        n => Some(
            *DropReason::ALL
                .iter()
                .find(|d| **d as u8 == n)
                .ok_or_else(|| invalid(format_args!("drop reason {n}")))?,
        ),
    };
    let src_identity = r.u32()?;
    let dst_identity = r.u32()?;
    let nat = match r.u8()? {
        0 => None,
        1 => Some(Nat {
            vip: get_addr(r)?,
            vip_port: r.u16()?,
            backend: get_addr(r)?,
            backend_port: r.u16()?,
            service: r.u32()?,
        }),
        n => return Err(invalid(format_args!("NAT flag {n}"))),
    };
    let mut v = [0u64; 7];
    for x in &mut v {
        *x = r.u64()?;
    }
    let [p0, p1, b0, b1, age_ns, idle_ns, remaining_ns] = v;
    if remaining_ns == 0 {
        return Err(invalid("no time left"));
    }
    Ok(SavedFlow {
        orig,
        reply,
        state,
        fins,
        policy,
        ended,
        src_identity,
        dst_identity,
        nat,
        packets: [p0, p1],
        bytes: [b0, b1],
        age_ns,
        idle_ns,
        remaining_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{PROTO_TCP, PROTO_UDP};

    fn flow(i: u16, proto: u8, v6: bool) -> SavedFlow {
        let a = |last: u8| {
            if v6 {
                let mut b = [0u8; 16];
                b[0] = 0xfd;
                b[15] = last;
                Addr::v6(b)
            } else {
                Addr::v4([10, 0, 0, last])
            }
        };
        let orig = FlowKey {
            src: a(1),
            dst: a(100),
            sport: 40_000 + i,
            dport: 80,
            proto,
        };
        let reply = FlowKey {
            src: a(20),
            dst: a(1),
            sport: 8080,
            dport: 40_000 + i,
            proto,
        };
        SavedFlow {
            orig,
            reply,
            state: FlowState::Established,
            fins: 1,
            policy: PolicyVerdict::Allow,
            ended: (i == 2).then_some(DropReason::BackendGone),
            src_identity: 1000 + u32::from(i),
            dst_identity: 2000,
            nat: Some(Nat {
                vip: a(100),
                vip_port: 80,
                backend: a(20),
                backend_port: 8080,
                service: 3,
            }),
            packets: [10, 9],
            bytes: [1000, 9000],
            age_ns: 5_000_000_000,
            idle_ns: 1_000,
            remaining_ns: 7_000_000_000,
        }
    }

    fn sample() -> Snapshot {
        let mut s = Snapshot::new(1_700_000_000_000);
        s.add(SavedPart {
            flows: vec![flow(1, PROTO_TCP, false), flow(2, PROTO_UDP, true)],
            affinity: vec![SavedAffinity {
                service: 0xdead_beef,
                client: Addr::v4([10, 0, 0, 1]),
                backend: Addr::v4([10, 0, 0, 20]),
                port: 8080,
                remaining_ns: 10,
            }],
        });
        let mut third = flow(3, PROTO_TCP, false);
        third.nat = None;
        s.add(SavedPart {
            flows: vec![third],
            // The same client on a second worker, with more time left: that one is kept.
            affinity: vec![SavedAffinity {
                service: 0xdead_beef,
                client: Addr::v4([10, 0, 0, 1]),
                backend: Addr::v4([10, 0, 0, 20]),
                port: 8080,
                remaining_ns: 99,
            }],
        });
        s
    }

    #[test]
    fn round_trip() {
        let s = sample();
        assert_eq!(s.affinity.len(), 1);
        assert_eq!(s.affinity[0].remaining_ns, 99);
        let bytes = s.encode();
        assert_eq!(&bytes[..8], b"NPCTSNAP");
        let back = Snapshot::decode(&bytes).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.flows.len(), 3);
        assert_eq!(back.flows[1].ended, Some(DropReason::BackendGone));
        assert_eq!(back.writer, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn empty_round_trip() {
        let s = Snapshot::new(1);
        assert_eq!(Snapshot::decode(&s.encode()).unwrap(), s);
    }

    #[test]
    fn every_corrupt_payload_byte_is_a_checksum_error() {
        let bytes = sample().encode();
        for i in HEADER_LEN..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert_eq!(
                Snapshot::decode(&b),
                Err(SnapshotError::Checksum),
                "byte {i}"
            );
        }
    }

    #[test]
    fn every_truncation_is_truncated() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert_eq!(
                Snapshot::decode(&bytes[..n]),
                Err(SnapshotError::Truncated),
                "cut at {n}"
            );
        }
    }

    #[test]
    fn foreign_version_and_magic() {
        let mut b = sample().encode();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            Snapshot::decode(&b),
            Err(SnapshotError::ForeignVersion { found: 2 })
        );
        let mut b = sample().encode();
        b[0] = b'X';
        assert_eq!(Snapshot::decode(&b), Err(SnapshotError::BadMagic));
        assert_eq!(
            Snapshot::decode(b"state: {}\n"),
            Err(SnapshotError::BadMagic)
        );
        let mut b = sample().encode();
        b.push(0);
        assert!(matches!(
            Snapshot::decode(&b),
            Err(SnapshotError::Invalid { .. })
        ));
    }

    /// A field out of range under a valid checksum (a writer bug, or a forged file) is
    /// named, with the entry it is in.
    #[test]
    fn invalid_field_under_a_good_checksum() {
        let mut s = sample();
        s.flows[1].remaining_ns = 0;
        let b = s.encode();
        match Snapshot::decode(&b) {
            Err(SnapshotError::Invalid { what }) => {
                assert!(
                    what.contains("flow 1") && what.contains("no time left"),
                    "{what}"
                )
            }
            other => panic!("{other:?}"),
        }
        // A count larger than the payload.
        let mut b = sample().encode();
        let at = HEADER_LEN + 2 + env!("CARGO_PKG_VERSION").len() + 8;
        b[at..at + 4].copy_from_slice(&9u32.to_le_bytes());
        let n = b.len() - TRAILER_LEN;
        let sum = fnv1a64(&b[..n]);
        b[n..].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(
            Snapshot::decode(&b),
            Err(SnapshotError::Invalid { .. })
        ));
    }
}
