//! The flow cache of the TC fast path (`bpf/fastpath.c`): its key and action layouts (mirrors of
//! `bpf/np_flows.h`), the slow-path MAC that carries the ingress interface to the worker, and
//! [`FlowTable`], a worker's handle on the `np_flows` map.
//!
//! The worker decides, the kernel repeats: an entry is one flow direction the worker has
//! decided (established, plain forward); the program forwards that direction's packets itself
//! (rewriting what the action says), stamps `last_seen_ns` and counts. Everything else goes up
//! to the worker through the slow-path veth pair, with the destination MAC replaced by
//! [`slow_path_mac`] of the ingress interface.
//!
//! [`FlowTable`] talks to the kernel with raw `bpf(2)` calls: batched updates and deletes (one
//! syscall for a burst's offers), no allocation per call (callers pass slices they reuse).

use std::{
    io, mem,
    os::fd::{AsRawFd, OwnedFd},
};

/// `struct np_flow_key` (44 bytes): a packet as it arrives on its ingress interface.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Ingress interface (host side of a pod veth).
    pub ifindex: u32,
    /// 6 (TCP) or 17 (UDP).
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    /// Always 0.
    pub _pad: u16,
    /// Source address; IPv4: the 4 bytes first, the other 12 zero.
    pub src: [u8; 16],
    /// Destination address, as `src`.
    pub dst: [u8; 16],
    /// Source port, network byte order (as on the wire: `u16::from_ne_bytes(wire_bytes)`).
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
}

/// [`FlowAction::flags`]: `bpf_redirect_peer(egress)`, straight into a pod's namespace (else
/// `bpf_redirect(egress, 0)`, the interface's egress). Only for an egress that is the host side
/// of a veth whose peer is in another namespace: the kernel drops what it cannot deliver so,
/// after the program returned (uncounted by it).
pub const FLOW_PEER: u32 = 1;
/// [`FlowAction::flags`]: decrement the TTL / hop limit (a TTL of 1 or less goes to the worker).
pub const FLOW_DEC_TTL: u32 = 2;
/// [`FlowAction::flags`]: rewrite the source address and port to [`FlowAction::src`]/`sport`.
pub const FLOW_NAT_SRC: u32 = 4;
/// [`FlowAction::flags`]: rewrite the destination address and port to `dst`/`dport`.
pub const FLOW_NAT_DST: u32 = 8;

/// `struct np_flow_action` (88 bytes): what the program does with a packet of the flow.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FlowAction {
    /// Source address after NAT (IPv4: 4 bytes first).
    pub src: [u8; 16],
    /// Destination address after NAT.
    pub dst: [u8; 16],
    /// Source port after NAT, network byte order.
    pub sport: u16,
    /// Destination port after NAT, network byte order.
    pub dport: u16,
    /// Where the packet leaves.
    pub egress_ifindex: u32,
    /// Destination MAC written into the frame.
    pub dmac: [u8; 6],
    /// Source MAC written into the frame.
    pub smac: [u8; 6],
    /// `FLOW_*` bits.
    pub flags: u32,
    /// The worker's table generation the decision was made under.
    pub generation: u32,
    /// Always 0.
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last packet forwarded; written by the
    /// program (the worker writes 0).
    pub last_seen_ns: u64,
    /// Segments forwarded (a GSO skb counts its segments); written by the program.
    pub packets: u64,
    /// Bytes forwarded (skb length, Ethernet header included); written by the program.
    pub bytes: u64,
}

const SLOW_MAC_PREFIX: [u8; 3] = [0x02, 0x6e, 0x70];

/// The destination MAC a slow-path frame carries: `02:6e:70:II:II:II`, the low 24 bits of the
/// ingress ifindex, big-endian (locally administered, unicast).
pub fn slow_path_mac(ifindex: u32) -> [u8; 6] {
    let b = ifindex.to_be_bytes();
    [
        SLOW_MAC_PREFIX[0],
        SLOW_MAC_PREFIX[1],
        SLOW_MAC_PREFIX[2],
        b[1],
        b[2],
        b[3],
    ]
}

/// The ingress ifindex a slow-path MAC carries; `None` for any other MAC (or ifindex 0).
pub fn ifindex_from_slow_path_mac(mac: &[u8; 6]) -> Option<u32> {
    if mac[..3] != SLOW_MAC_PREFIX {
        return None;
    }
    let i = u32::from_be_bytes([0, mac[3], mac[4], mac[5]]);
    (i != 0).then_some(i)
}

use crate::sys;

const CLEAR_CHUNK: usize = 1024;

/// A handle on the `np_flows` map with its own file descriptor (one per worker; `Send`).
/// Nothing here allocates after [`FlowTable::from_fd`] (its clear buffer is made there).
pub struct FlowTable {
    fd: OwnedFd,
    capacity: u32,
    clear_keys: Box<[FlowKey]>,
    clear_values: Box<[FlowAction]>,
}

impl std::fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTable")
            .field("fd", &self.fd.as_raw_fd())
            .field("capacity", &self.capacity)
            .finish()
    }
}

fn is_absent(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOMEM))
}

impl FlowTable {
    /// Wraps a file descriptor of an `np_flows` map (checked: key and value sizes).
    pub fn from_fd(fd: OwnedFd) -> io::Result<FlowTable> {
        let (key_size, value_size, max_entries) = sys::map_info(fd.as_raw_fd() as u32)?;
        if key_size as usize != mem::size_of::<FlowKey>()
            || value_size as usize != mem::size_of::<FlowAction>()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "not an np_flows map: key {key_size} value {value_size} bytes (want {} and {})",
                    mem::size_of::<FlowKey>(),
                    mem::size_of::<FlowAction>()
                ),
            ));
        }
        Ok(FlowTable {
            fd,
            capacity: max_entries,
            clear_keys: vec![FlowKey::default(); CLEAR_CHUNK].into_boxed_slice(),
            clear_values: vec![FlowAction::default(); CLEAR_CHUNK].into_boxed_slice(),
        })
    }

    fn fd(&self) -> u32 {
        self.fd.as_raw_fd() as u32
    }

    /// Inserts (or replaces) `keys[i] -> actions[i]` in one `BPF_MAP_UPDATE_BATCH` call (more
    /// only when an entry fails). An entry the full map has no room for is skipped, the others
    /// go in. Returns how many went in. Errors: `keys` and `actions` of different lengths
    /// (`InvalidInput`), or the kernel refusing for another reason than a full map.
    pub fn insert_batch(&mut self, keys: &[FlowKey], actions: &[FlowAction]) -> io::Result<usize> {
        if keys.len() != actions.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "insert_batch: keys and actions differ in length",
            ));
        }
        let mut done = 0;
        let mut at = 0;
        while at < keys.len() {
            let (n, r) = sys::update_batch(self.fd(), &keys[at..], &actions[at..]);
            done += n;
            match r {
                Ok(()) => break,
                Err(e) if is_full(&e) => at += n + 1, // skip the entry that found no room
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Deletes `keys` (one `BPF_MAP_DELETE_BATCH` call, more only when some are absent).
    /// Returns how many were there.
    pub fn remove_batch(&mut self, keys: &[FlowKey]) -> io::Result<usize> {
        let mut done = 0;
        let mut at = 0;
        while at < keys.len() {
            let (n, r) = sys::delete_batch(self.fd(), &keys[at..]);
            done += n;
            match r {
                Ok(()) => break,
                Err(e) if is_absent(&e) => at += n + 1, // skip the absent key
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// The entry of `key` as the program left it (its counters and `last_seen_ns`), if any.
    pub fn get(&self, key: &FlowKey) -> io::Result<Option<FlowAction>> {
        let mut v = FlowAction::default();
        match sys::lookup(self.fd(), key, &mut v) {
            Ok(()) => Ok(Some(v)),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `last_seen_ns` of `key`'s entry (0: never hit since it was offered), `None` when absent.
    pub fn last_seen(&self, key: &FlowKey) -> io::Result<Option<u64>> {
        Ok(self.get(key)?.map(|a| a.last_seen_ns))
    }

    /// Empties the map (`BPF_MAP_LOOKUP_AND_DELETE_BATCH` in chunks). Returns how many entries
    /// were deleted. Entries inserted concurrently may survive.
    pub fn clear(&mut self) -> io::Result<usize> {
        let mut total = 0;
        let (mut from, mut next) = (None, 0u64);
        loop {
            // Each call goes on where the last one stopped (its buckets are empty now).
            let (n, r) = sys::take_batch(
                self.fd(),
                from.as_ref(),
                &mut next,
                &mut self.clear_keys,
                &mut self.clear_values,
            );
            total += n;
            match r {
                Ok(()) if n == 0 => return Ok(total),
                Ok(()) => from = Some(next),
                Err(e) if is_absent(&e) => return Ok(total), // the last chunk
                Err(e) => return Err(e),
            }
        }
    }

    /// How many entries the map holds (walks the keys: one syscall per entry; for status
    /// and tests, not for the packet path).
    pub fn len(&self) -> io::Result<usize> {
        let mut n = 0;
        let mut cur = FlowKey::default();
        let mut next = FlowKey::default();
        let mut first = true;
        loop {
            match sys::next_key(self.fd(), (!first).then_some(&cur), &mut next) {
                Ok(()) => {
                    n += 1;
                    cur = next;
                    first = false;
                }
                Err(e) if is_absent(&e) => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The map's `max_entries`.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn layouts_match_np_flows_h() {
        // struct np_flow_key
        assert_eq!(size_of::<FlowKey>(), 44);
        assert_eq!(offset_of!(FlowKey, ifindex), 0);
        assert_eq!(offset_of!(FlowKey, proto), 4);
        assert_eq!(offset_of!(FlowKey, family), 5);
        assert_eq!(offset_of!(FlowKey, _pad), 6);
        assert_eq!(offset_of!(FlowKey, src), 8);
        assert_eq!(offset_of!(FlowKey, dst), 24);
        assert_eq!(offset_of!(FlowKey, sport), 40);
        assert_eq!(offset_of!(FlowKey, dport), 42);
        // struct np_flow_action
        assert_eq!(size_of::<FlowAction>(), 88);
        assert_eq!(offset_of!(FlowAction, src), 0);
        assert_eq!(offset_of!(FlowAction, dst), 16);
        assert_eq!(offset_of!(FlowAction, sport), 32);
        assert_eq!(offset_of!(FlowAction, dport), 34);
        assert_eq!(offset_of!(FlowAction, egress_ifindex), 36);
        assert_eq!(offset_of!(FlowAction, dmac), 40);
        assert_eq!(offset_of!(FlowAction, smac), 46);
        assert_eq!(offset_of!(FlowAction, flags), 52);
        assert_eq!(offset_of!(FlowAction, generation), 56);
        assert_eq!(offset_of!(FlowAction, _pad), 60);
        assert_eq!(offset_of!(FlowAction, last_seen_ns), 64);
        assert_eq!(offset_of!(FlowAction, packets), 72);
        assert_eq!(offset_of!(FlowAction, bytes), 80);
    }

    #[test]
    fn slow_path_mac_round_trips() {
        for i in [1u32, 2, 0x7f, 0x100, 0xabcd, 0x00ff_ffff] {
            let mac = slow_path_mac(i);
            assert_eq!(&mac[..3], &[0x02, 0x6e, 0x70]);
            assert_eq!(mac[0] & 1, 0, "unicast");
            assert_eq!(mac[0] & 2, 2, "locally administered");
            assert_eq!(ifindex_from_slow_path_mac(&mac), Some(i));
        }
        // Only the low 24 bits travel.
        assert_eq!(
            ifindex_from_slow_path_mac(&slow_path_mac(0x0100_0005)),
            Some(5)
        );
        assert_eq!(ifindex_from_slow_path_mac(&slow_path_mac(0)), None);
        assert_eq!(
            ifindex_from_slow_path_mac(&[0x02, 0x6e, 0x71, 0, 0, 1]),
            None
        );
        assert_eq!(
            ifindex_from_slow_path_mac(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            None
        );
    }
}
