//! The pipeline target's input format: a header, then frames, each with its interface and the
//! time since the previous one. Seeds in this format come from the golden cases
//! (`gen_pipeline.py`).
//!
//! ```text
//!  [0] state A: index into `states::STATES` (mod its length), published first
//!  [1] state B: published before frame number [3] (after the last frame if beyond)
//!  [2] flags: bit 0 removed-flow-action rst; bit 1 flow events observed;
//!      bits 2-3 the policy-mode override set with B (0 none, 1 enforce, 2 audit, 3 allow-all)
//!  [3] the frame before which B is published
//!  frames: [iface][dt][len: u16 LE][len bytes]     (a short last frame takes what is left)
//!      iface bits 0-6: an `IFACE_NAMES` name (>= 8: the state's interface of that number),
//!      bit 7: the burst ends before this frame; dt: `delta_ns`
//! ```

/// Interface names the input knows by number: the golden cases' and the example node's.
pub const IFACE_NAMES: [&str; 8] = [
    "eth0",
    "veth-a",
    "veth-b",
    "veth-c",
    "uplink0",
    "pod-client",
    "pod-web1",
    "pod-web2",
];

#[derive(Debug, Clone)]
pub struct Frame<'a> {
    /// Bits 0-6 of the interface byte.
    pub iface: u8,
    /// The burst ends before this frame.
    pub burst_break: bool,
    /// Nanoseconds since the previous frame.
    pub delta: u64,
    pub data: &'a [u8],
}

#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub state_a: u8,
    pub state_b: u8,
    pub rst: bool,
    pub observed: bool,
    /// 0 none, 1 enforce, 2 audit, 3 allow-all.
    pub mode_override: u8,
    pub publish_before: usize,
    pub frames: Vec<Frame<'a>>,
}

/// A time code: four ranges of 64 steps (100 µs, 10 ms, 1 s, 2 min), so one input reaches
/// every timeout of the conntrack (up to hours) and still orders frames within a millisecond.
pub fn delta_ns(code: u8) -> u64 {
    const UNITS: [u64; 4] = [100_000, 10_000_000, 1_000_000_000, 120_000_000_000];
    UNITS[usize::from(code >> 6)] * u64::from(code & 63)
}

/// At most this many frames per input (a burst is 64: enough for several bursts and a
/// publication, few enough that one execution stays short).
pub const MAX_FRAMES: usize = 512;

pub fn decode(data: &[u8]) -> Option<Input<'_>> {
    let (&[a, b, flags, at], mut rest) = data.split_first_chunk::<4>()?;
    let mut frames = Vec::new();
    while let Some((&[iface, dt, lo, hi], tail)) = rest.split_first_chunk::<4>() {
        let len = usize::from(u16::from_le_bytes([lo, hi])).min(tail.len());
        let (frame, tail) = tail.split_at(len);
        frames.push(Frame {
            iface: iface & 0x7f,
            burst_break: iface & 0x80 != 0,
            delta: delta_ns(dt),
            data: frame,
        });
        rest = tail;
        if frames.len() == MAX_FRAMES {
            break;
        }
    }
    Some(Input {
        state_a: a,
        state_b: b,
        rst: flags & 1 != 0,
        observed: flags & 2 != 0,
        mode_override: (flags >> 2) & 3,
        publish_before: usize::from(at),
        frames,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_header_frames_and_a_short_tail() {
        let mut d = vec![3, 4, 0b1011, 1];
        d.extend([0x81, 65, 2, 0, 0xaa, 0xbb]);
        d.extend([2, 0, 9, 0, 0xcc]);
        let i = decode(&d).expect("header");
        assert_eq!(
            (i.state_a, i.state_b, i.rst, i.observed),
            (3, 4, true, true)
        );
        assert_eq!((i.mode_override, i.publish_before), (2, 1));
        assert_eq!(i.frames.len(), 2);
        assert_eq!(i.frames[0].iface, 1);
        assert!(i.frames[0].burst_break);
        assert_eq!(i.frames[0].delta, 10_000_000);
        assert_eq!(i.frames[0].data, &[0xaa, 0xbb]);
        assert_eq!(i.frames[1].data, &[0xcc]);
        assert!(decode(&[1, 2, 3]).is_none());
    }

    #[test]
    fn time_codes_cover_microseconds_to_hours() {
        assert_eq!(delta_ns(0), 0);
        assert_eq!(delta_ns(1), 100_000);
        assert_eq!(delta_ns(128 + 5), 5_000_000_000);
        assert_eq!(delta_ns(255), 63 * 120_000_000_000);
    }
}
