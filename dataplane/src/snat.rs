//! Source NAT port allocation: which source port a new flow gets when its source is rewritten.
//!
//! A flow is source-NATed when Kubernetes masquerades it (external traffic to a backend on
//! another node, hairpin) and when its reply tuple would clash with another flow's (the same
//! client port reaching one backend through two frontends): see `Pipeline::snat_for`. The
//! allocator picks the port; conntrack is its only book. A port is free for a flow when no live
//! entry holds the reply tuple `(backend, backend port) → (SNAT address, port)`, so a port is
//! reusable toward every other backend, and it frees itself when the entry that holds it
//! expires or is removed: there is no second table to keep in step, and nothing to leak.
//!
//! Order, as Linux's `nf_nat_l4proto_unique_tuple`: the flow's own source port first (when it
//! lies in the range), then the range from an offset given by the flow's hash, wrapping, for at
//! most [`MAX_PROBES`] conntrack probes. Ports that another rule excludes (a frontend on the
//! SNAT address, a port whose replies another worker would receive) are skipped by the
//! caller's predicate before they cost a probe, and do not count against the limit. Nothing
//! allocates; the cost is one conntrack probe per candidate, paid only by flows that need SNAT.

use crate::flow::Addr;

/// The source that flows from outside the node to a **host-network backend** (a node IP behind
/// the host interface) are masqueraded to, IPv4: the host interface's link-local gateway. The
/// node's stack answers a remote client by its own routes (straight out of the uplink, never
/// un-NATed); it answers this address through the pair instead, because the host interface's
/// routing table (7600, rule `iif lo`) routes it to `nph0`, so the reply meets the flow's
/// conntrack entry on `nph1`. Link-local: never a real peer of the node (the cloud metadata
/// address 169.254.169.254 is another one), so its route steals none of the node's traffic.
pub const HOST_SNAT_V4: [u8; 4] = [169, 254, 0, 1];

/// The IPv6 counterpart of [`HOST_SNAT_V4`]: `100::1`, from the discard-only prefix
/// `100::/64` (RFC 6666), routed to `nph0` by table 7600 like the IPv4 one. Not the link-local
/// gateway `fe80::1`: a link-local peer is reachable only with its scope (the interface), which
/// TCP keeps (`ir_iif`) but a UDP server that stores the address without `sin6_scope_id`
/// loses (`sendto` then fails with EINVAL); a global-scope address needs nothing from the
/// application. From the discard-only block because no node ever has a real peer there, so
/// the route steals nothing.
pub const HOST_SNAT_V6: [u8; 16] = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// The host-network masquerade source of a family ([`HOST_SNAT_V4`], [`HOST_SNAT_V6`]).
#[inline]
pub fn host_snat_addr(v6: bool) -> Addr {
    if v6 {
        Addr::v6(HOST_SNAT_V6)
    } else {
        Addr::v4(HOST_SNAT_V4)
    }
}

/// Conntrack probes per allocation before giving up (`snat-exhausted`). Linux tries up to 128
/// ports of a random start before it halves its attempts; with a range of 4536 ports a table
/// needs thousands of flows to one backend port before a probe run of this length fails.
pub const MAX_PROBES: usize = 128;

/// An inclusive port range (`node.snat_port_range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn new(first: u16, last: u16) -> PortRange {
        PortRange {
            first: first.min(last),
            last: first.max(last),
        }
    }

    pub fn contains(&self, p: u16) -> bool {
        (self.first..=self.last).contains(&p)
    }

    pub fn len(&self) -> u32 {
        u32::from(self.last - self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

impl Default for PortRange {
    fn default() -> Self {
        let [first, last] = nodeplane_state::DEFAULT_SNAT_PORT_RANGE;
        PortRange { first, last }
    }
}

/// Why no port was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// [`MAX_PROBES`] candidates were probed and all were taken.
    Probes,
    /// The whole range was looked at.
    Range,
}

/// The first port for which `usable` (cheap: frontend and ownership rules) and then `free` (a
/// conntrack probe) hold, in the order of the module docs. `original`: the flow's own source
/// port; `seed`: a hash of the flow (replay stays deterministic).
pub fn allocate(
    range: PortRange,
    original: u16,
    seed: u64,
    mut usable: impl FnMut(u16) -> bool,
    mut free: impl FnMut(u16) -> bool,
) -> Result<u16, Exhausted> {
    let mut probes = 0;
    if range.contains(original) && usable(original) {
        probes += 1;
        if free(original) {
            return Ok(original);
        }
    }
    let n = range.len();
    let start = (seed % u64::from(n)) as u32;
    for i in 0..n {
        let p = range.first + ((start + i) % n) as u16;
        if p == original || !usable(p) {
            continue;
        }
        if probes == MAX_PROBES {
            return Err(Exhausted::Probes);
        }
        probes += 1;
        if free(p) {
            return Ok(p);
        }
    }
    Err(Exhausted::Range)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const R: PortRange = PortRange {
        first: 61000,
        last: 61009,
    };

    #[test]
    fn original_port_first_when_in_range_and_free() {
        assert_eq!(allocate(R, 61005, 3, |_| true, |_| true), Ok(61005));
        // Outside the range: the probe sequence from the seed's offset.
        assert_eq!(allocate(R, 40000, 3, |_| true, |_| true), Ok(61003));
        assert_eq!(allocate(R, 40000, 13, |_| true, |_| true), Ok(61003));
    }

    #[test]
    fn taken_ports_are_skipped_and_the_sequence_wraps() {
        let taken: HashSet<u16> = [61005, 61008, 61009].into();
        let mut probed = Vec::new();
        let got = allocate(
            R,
            61005,
            8,
            |_| true,
            |p| {
                probed.push(p);
                !taken.contains(&p)
            },
        );
        assert_eq!(got, Ok(61000));
        assert_eq!(probed, [61005, 61008, 61009, 61000]);
    }

    #[test]
    fn unusable_ports_cost_no_probe() {
        // Only even ports usable (another worker's, or a frontend): odd ones are never probed.
        let mut probed = Vec::new();
        let got = allocate(
            R,
            61001,
            1,
            |p| p % 2 == 0,
            |p| {
                probed.push(p);
                p == 61006
            },
        );
        assert_eq!(got, Ok(61006));
        assert_eq!(probed, [61002, 61004, 61006]);
    }

    #[test]
    fn exhaustion_is_an_error_never_a_duplicate() {
        assert_eq!(
            allocate(R, 61000, 0, |_| true, |_| false),
            Err(Exhausted::Range)
        );
        assert_eq!(
            allocate(R, 61000, 0, |_| false, |_| true),
            Err(Exhausted::Range)
        );
        let big = PortRange::new(1024, 65535);
        let mut n = 0;
        assert_eq!(
            allocate(
                big,
                2000,
                0,
                |_| true,
                |_| {
                    n += 1;
                    false
                }
            ),
            Err(Exhausted::Probes)
        );
        assert_eq!(n, MAX_PROBES);
    }

    /// Allocating until the range is full hands out every port once.
    #[test]
    fn fills_the_range_without_duplicates() {
        let mut taken = HashSet::new();
        for i in 0..R.len() {
            let p = allocate(
                R,
                61003,
                u64::from(i) * 7919,
                |_| true,
                |p| !taken.contains(&p),
            )
            .expect("room left");
            assert!(R.contains(p));
            assert!(taken.insert(p), "{p} handed out twice");
        }
        assert_eq!(
            allocate(R, 61003, 1, |_| true, |p| !taken.contains(&p)),
            Err(Exhausted::Range)
        );
    }
}
