//! Reading and writing the capture files of the cases.

use std::borrow::Cow;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::time::Duration;

use nodeplane_dataplane::replay::read_raw;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
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

/// Reads a pcap or pcapng file into frames, with the link type of the file (pcapng: of the
/// first interface). The project's one capture reader does the reading
/// ([`nodeplane_dataplane::replay::read_raw`]); timestamps are converted to `Duration`.
pub fn read_capture(path: &Path) -> Result<(DataLink, Vec<Frame>), String> {
    let (link, frames) = read_raw(path).map_err(|e| e.to_string())?;
    Ok((
        link,
        frames
            .into_iter()
            .map(|c| (Duration::from_nanos(c.ts), c.data))
            .collect(),
    ))
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
