//! The new-connection lane of the common frame: a TCP SYN of an IPv4 frame that is not a
//! fragment, arriving on a pod interface from a source that passes anti-spoofing, with no flow
//! of its key, goes from the general path's entry straight to `new_flow`, without
//! `process_parsed`'s and `flow_path`'s generality (fragments, ICMP errors, the uplink's
//! ownership tests, a live flow's handling). It makes exactly the checks that path makes for
//! such a packet, in the same order, and decides nothing of its own: anything else (another
//! role, a link-scoped address, a spoofed source, a key with a flow) returns `None` with
//! nothing changed but what the same path would have changed (an expired entry of the key
//! removed by its lookup) and the SYN's look-ahead hint taken (the full path then looks up
//! what it would have given), and the packet takes the general path.

use nodeplane_state::InterfaceRole;

use super::{is_link_scoped, syn, Outcome, Packet, Pipeline};
use crate::flow::FlowKey;
use crate::parse::{Frag, Meta};
use crate::tables::Tables;

/// A packet the lane may take: an IPv4 TCP SYN (no ACK, RST or FIN), not a fragment.
#[inline(always)]
pub(super) fn candidate(m: &Meta) -> bool {
    syn::is_syn4(m.v6, m.proto, m.tcp_flags) && m.frag == Frag::None
}

impl Pipeline {
    /// The lane for a [`candidate`]: `Some(outcome)` when it took the packet (the frame
    /// rewritten as the full path would have), `None` when the full path is to take it.
    #[inline(always)]
    pub(super) fn new4(&mut self, t: &Tables, p: &mut Packet<'_>, m: &Meta) -> Option<Outcome> {
        // Classification as `process_parsed` makes it on a pod interface.
        let itf = t.ifaces.get(usize::from(p.iface))?;
        if itf.role != InterfaceRole::Pod || is_link_scoped(&m.dst) || is_link_scoped(&m.src) {
            return None;
        }
        let ep = t.endpoint_of(&m.src)?;
        if t.endpoints.get(ep as usize)?.iface != p.iface {
            return None;
        }
        // `flow_path`: no flow of this key (a live one takes the full path).
        let key = FlowKey {
            src: m.src,
            dst: m.dst,
            sport: m.sport,
            dport: m.dport,
            proto: m.proto,
        };
        // The burst's look-ahead of this SYN (`syn.rs`), with the key's conntrack hash.
        let hint = self.ahead.take(&key);
        let key_hash = match hint {
            Some(h) => h.ct_hash,
            None => self.ct.hash(&key),
        };
        debug_assert_eq!(key_hash, self.ct.hash(&key));
        if self.ct.lookup_hashed(&key, key_hash, p.ts).is_some() {
            return None;
        }
        let mut m = *m;
        Some(self.new_flow(
            t,
            p.data,
            &mut m,
            key,
            key_hash,
            hint,
            p.iface,
            Some(Some(ep)),
            true,
            p.ts,
        ))
    }
}
