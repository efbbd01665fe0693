//! Reading and writing the capture files of the cases.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, Endianness, TsResolution};

/// Capture timestamps start here (2023-11-14T22:13:20Z) so files look like real captures.
pub const EPOCH_SECS: u64 = 1_700_000_000;

/// Writes an Ethernet pcap (little endian, microseconds): deterministic bytes for given frames.
pub fn write_pcap(path: &Path, frames: &[(Duration, Vec<u8>)]) -> std::io::Result<()> {
    let file = BufWriter::new(File::create(path)?);
    let header = PcapHeader {
        version_major: 2,
        version_minor: 4,
        ts_correction: 0,
        ts_accuracy: 0,
        snaplen: 65535,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::Little,
    };
    let mut w = PcapWriter::with_header(file, header).map_err(std::io::Error::other)?;
    for (ts, data) in frames {
        let p = PcapPacket::new(*ts, data.len() as u32, data);
        w.write_packet(&p).map_err(std::io::Error::other)?;
    }
    Ok(())
}

/// A packet read back: timestamp and bytes.
pub type Frame = (Duration, Vec<u8>);

/// Reads a pcap or pcapng file (by its magic) into frames, with the link type of the file
/// (pcapng: of the first interface).
pub fn read_capture(path: &Path) -> Result<(DataLink, Vec<Frame>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let err = |e: pcap_file::PcapError| format!("{}: {e}", path.display());
    if bytes.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
        let mut r = PcapNgReader::new(&bytes[..]).map_err(err)?;
        let mut out = Vec::new();
        let mut link = None;
        while let Some(block) = r.next_block() {
            match block.map_err(err)? {
                Block::InterfaceDescription(i) => {
                    link.get_or_insert(i.linktype);
                }
                Block::EnhancedPacket(p) => out.push((p.timestamp, p.data.into_owned())),
                Block::SimplePacket(p) => out.push((Duration::ZERO, p.data.into_owned())),
                _ => {}
            }
        }
        Ok((link.unwrap_or(DataLink::ETHERNET), out))
    } else {
        let mut r = PcapReader::new(BufReader::new(&bytes[..])).map_err(err)?;
        let link = r.header().datalink;
        let mut out = Vec::new();
        while let Some(p) = r.next_packet() {
            let p = p.map_err(err)?;
            out.push((p.timestamp, p.data.into_owned()));
        }
        Ok((link, out))
    }
}

/// Converts a pcap file into a pcapng file with one Ethernet interface (nanosecond timestamps).
pub fn pcap_to_pcapng(src: &Path, dst: &Path) -> Result<usize, String> {
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::{
        InterfaceDescriptionBlock, InterfaceDescriptionOption,
    };
    use pcap_file::pcapng::PcapNgWriter;
    let (link, frames) = read_capture(src)?;
    let file = BufWriter::new(File::create(dst).map_err(|e| format!("{}: {e}", dst.display()))?);
    let err = |e: pcap_file::PcapError| format!("{}: {e}", dst.display());
    let mut w = PcapNgWriter::new(file).map_err(err)?;
    let idb = InterfaceDescriptionBlock {
        linktype: link,
        snaplen: 0,
        // pcap-file writes nanosecond timestamps: say so, or readers assume microseconds.
        options: vec![InterfaceDescriptionOption::IfTsResol(9)],
    };
    w.write_pcapng_block(idb).map_err(err)?;
    for (ts, data) in &frames {
        let epb = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: *ts,
            original_len: data.len() as u32,
            data: Cow::Borrowed(&data[..]),
            options: vec![],
        };
        w.write_pcapng_block(epb).map_err(err)?;
    }
    Ok(frames.len())
}
