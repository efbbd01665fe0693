//! Reading captures: the project's one pcap reader (`nodeplane replay`, the daemon's
//! `io: replay`, the golden cases' harness). pcap and pcapng (told apart by their magic number),
//! Ethernet or raw IP.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::DataLink;

use crate::wire::{ethernet, ipv6};

/// One captured frame: capture time in nanoseconds and its bytes as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub ts: u64,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a readable pcap/pcapng capture: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: pcap_file::PcapError,
    },
    #[error("{path}: link type {link:?} is not supported (Ethernet or raw IP only)")]
    LinkType { path: PathBuf, link: DataLink },
}

/// Reads a capture as stored: the link type (pcapng: of its first interface) and its frames.
pub fn read_raw(path: &Path) -> Result<(DataLink, Vec<Captured>), CaptureError> {
    let mut frames = Vec::new();
    let mut first_link = None;
    read_blocks(path, |link, ts, data| {
        first_link.get_or_insert(link);
        frames.push(Captured {
            ts,
            data: data.to_vec(),
        });
        Ok(())
    })?;
    Ok((first_link.unwrap_or(DataLink::ETHERNET), frames))
}

/// Reads a capture as Ethernet frames: raw-IP frames get a synthetic Ethernet header (zero
/// MACs) so that they enter like any frame; other link types are an error.
pub fn read_ethernet(path: &Path) -> Result<Vec<Captured>, CaptureError> {
    let mut frames = Vec::new();
    read_blocks(path, |link, ts, data| {
        let data = to_ethernet(path, link, data)?;
        frames.push(Captured { ts, data });
        Ok(())
    })?;
    Ok(frames)
}

/// Calls `f(link, ts_ns, data)` for every frame of a pcap or pcapng file.
fn read_blocks(
    path: &Path,
    mut f: impl FnMut(DataLink, u64, &[u8]) -> Result<(), CaptureError>,
) -> Result<(), CaptureError> {
    let io = |source| CaptureError::Io {
        path: path.to_path_buf(),
        source,
    };
    let format = |source| CaptureError::Format {
        path: path.to_path_buf(),
        source,
    };
    let mut magic = [0u8; 4];
    BufReader::new(File::open(path).map_err(io)?)
        .read_exact(&mut magic)
        .map_err(io)?;
    let file = BufReader::new(File::open(path).map_err(io)?);
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut r = PcapNgReader::new(file).map_err(format)?;
        // Per interface: (link type, nanoseconds per timestamp unit as numerator/denominator).
        let mut ifaces: Vec<(DataLink, u64, u64)> = Vec::new();
        let mut last_ts = 0;
        while let Some(block) = r.next_block() {
            match block.map_err(format)? {
                Block::InterfaceDescription(idb) => {
                    // pcap-file hands the raw 64-bit timestamp over as nanoseconds; scale it by
                    // the interface's if_tsresol (default 10^-6 s).
                    let mut scale = (1000u64, 1u64);
                    for o in &idb.options {
                        if let InterfaceDescriptionOption::IfTsResol(res) = o {
                            scale = tsresol_scale(*res);
                        }
                    }
                    ifaces.push((idb.linktype, scale.0, scale.1));
                }
                Block::EnhancedPacket(epb) => {
                    let (link, num, den) = ifaces
                        .get(epb.interface_id as usize)
                        .copied()
                        .unwrap_or((DataLink::ETHERNET, 1000, 1));
                    let raw = epb.timestamp.as_nanos() as u64;
                    last_ts = raw.saturating_mul(num) / den;
                    f(link, last_ts, &epb.data)?;
                }
                Block::SimplePacket(spb) => {
                    // No timestamp of its own: the previous packet's.
                    let link = ifaces.first().map(|i| i.0).unwrap_or(DataLink::ETHERNET);
                    f(link, last_ts, &spb.data)?;
                }
                _ => {}
            }
        }
    } else {
        let mut r = PcapReader::new(file).map_err(format)?;
        let link = r.header().datalink;
        while let Some(p) = r.next_packet() {
            let p = p.map_err(format)?;
            f(link, p.timestamp.as_nanos() as u64, &p.data)?;
        }
    }
    Ok(())
}

/// if_tsresol: high bit clear = 10^-n s, set = 2^-n s. Returns (num, den) to turn units into ns.
fn tsresol_scale(res: u8) -> (u64, u64) {
    let n = u32::from(res & 0x7f);
    if res & 0x80 == 0 {
        if n <= 9 {
            (10u64.pow(9 - n), 1)
        } else {
            (1, 10u64.pow((n - 9).min(18)))
        }
    } else {
        (1_000_000_000, 1u64 << n.min(63))
    }
}

fn to_ethernet(path: &Path, link: DataLink, data: &[u8]) -> Result<Vec<u8>, CaptureError> {
    match link {
        DataLink::ETHERNET => Ok(data.to_vec()),
        // LINKTYPE 12 is raw IP as written by OpenBSD-derived tools.
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 | DataLink::Unknown(12) => {
            let ethertype: u16 = match data.first().map(|b| b >> 4) {
                Some(ipv6::VERSION) => ethernet::ETHERTYPE_IPV6,
                _ => ethernet::ETHERTYPE_IPV4,
            };
            // Zero MACs, then the ethertype.
            let mut f = Vec::with_capacity(data.len() + ethernet::HEADER_LEN);
            f.extend_from_slice(&[0u8; ethernet::MACS.end]);
            f.extend_from_slice(&ethertype.to_be_bytes());
            f.extend_from_slice(data);
            Ok(f)
        }
        other => Err(CaptureError::LinkType {
            path: path.to_path_buf(),
            link: other,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::tsresol_scale;

    #[test]
    fn tsresol_scales_to_nanoseconds() {
        assert_eq!(tsresol_scale(6), (1000, 1), "microseconds (the default)");
        assert_eq!(tsresol_scale(9), (1, 1), "nanoseconds");
        assert_eq!(tsresol_scale(12), (1, 1000), "picoseconds");
        assert_eq!(tsresol_scale(0x80 | 10), (1_000_000_000, 1024), "2^-10 s");
    }
}
