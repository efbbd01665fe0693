//! Reading captures: the project's one pcap reader.

use std::fs::File;
use std::path::Path;

use super::io::{ReplayIoError, REPLAY_FRAME};

pub fn load_pcap(path: &Path) -> Result<Vec<Vec<u8>>, ReplayIoError> {
    let f = File::open(path).map_err(|source| ReplayIoError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let read = |source| ReplayIoError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut r = pcap_file::pcap::PcapReader::new(std::io::BufReader::new(f)).map_err(read)?;
    let link = r.header().datalink;
    if link != pcap_file::DataLink::ETHERNET {
        return Err(ReplayIoError::LinkType {
            path: path.to_path_buf(),
            link,
        });
    }
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.map_err(read)?;
        if p.data.len() > REPLAY_FRAME {
            return Err(ReplayIoError::TooLong {
                path: path.to_path_buf(),
                index: out.len(),
                len: p.data.len(),
                max: REPLAY_FRAME,
            });
        }
        out.push(p.data.into_owned());
    }
    Ok(out)
}
