//! The closed set of reasons the node loses a frame: every drop in the pipeline carries exactly
//! one of these, and so does every frame the worker's I/O or the worker itself loses (no TX
//! socket, a failed transmit, a full hand-off queue, a panicked burst, ...).
//! [`Counters`](crate::Counters) counts the pipeline's per reason, the I/O its own
//! ([`PacketIo::drops`](crate::worker::PacketIo::drops)); the worker's stats add them up, and
//! status, metrics (`nodeplane_drops_total{reason}`), replay verdicts, logs and flow events
//! all name them from here. Adding a reason means adding it here, nowhere else.

macro_rules! drop_reasons {
    ($($(#[doc = $doc:literal])* $variant:ident = $num:literal => $name:literal,)*) => {
        /// Why a packet was dropped. The numeric value is stable (metrics, flow events).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DropReason {
            $($(#[doc = $doc])* $variant = $num,)*
        }

        impl DropReason {
            /// Every reason, in numeric order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// The kebab-case name used in verdicts, metrics and the CLI.
            pub const fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }
            pub fn from_name(name: &str) -> Option<DropReason> {
                match name { $($name => Some(DropReason::$variant),)* _ => None }
            }
        }
    };
}

drop_reasons! {
    /// Frame shorter than an Ethernet (or 802.1Q) header.
    MalformedEthernet = 1 => "malformed-ethernet",
    /// IPv4 header truncated, bad version/IHL, or total length beyond the frame.
    MalformedIpv4 = 2 => "malformed-ipv4",
    /// IPv6 header or extension header chain truncated, or payload length beyond the frame.
    MalformedIpv6 = 3 => "malformed-ipv6",
    /// TCP/UDP/ICMP header truncated or inconsistent (e.g. TCP data offset < 5, a UDP length
    /// below 8 or beyond the IP datagram).
    MalformedL4 = 4 => "malformed-l4",
    /// IPv4 header checksum does not verify.
    BadIpChecksum = 5 => "bad-ip-checksum",
    /// The frame entered on an interface the state does not know.
    UnknownInterface = 6 => "unknown-interface",
    /// A pod interface sent a source address that is not its endpoint's.
    SpoofedSource = 7 => "spoofed-source",
    /// TTL / hop limit would reach zero on forwarding.
    TtlExceeded = 8 => "ttl-exceeded",
    /// Destination inside a local PodCIDR but no local endpoint has that address.
    NoEndpoint = 9 => "no-endpoint",
    /// The uplink's next-hop MAC is not known.
    NoNeighbor = 10 => "no-neighbor",
    /// Destination is a service IP but no frontend matches the port/protocol.
    NoService = 11 => "no-service",
    /// The service has no backend that may take a new flow.
    NoBackend = 12 => "no-backend",
    /// The flow's backend was removed or quarantined.
    BackendGone = 13 => "backend-gone",
    /// Identity policy denied the flow.
    PolicyDenied = 14 => "policy-denied",
    /// Conntrack table full and nothing could be reclaimed or evicted.
    CtFull = 15 => "ct-full",
    /// A packet that no flow state can explain (e.g. an ICMP error about an unknown flow that
    /// would need translation).
    CtInvalid = 16 => "ct-invalid",
    /// A held fragment's first fragment never came within the fragment timeout.
    FragTimeout = 17 => "frag-timeout",
    /// No room to hold an out-of-order fragment or to remember a datagram's ports.
    FragOverflow = 18 => "frag-overflow",
    /// A fragment that cannot be valid (e.g. first fragment too short to hold the L4 ports).
    FragMalformed = 19 => "frag-malformed",
    /// The fragment's datagram was dropped when its first fragment was processed.
    FragOfDroppedDatagram = 20 => "frag-of-dropped",
    /// An IP protocol we do not forward from pods (only TCP, UDP, ICMP, ICMPv6 and
    /// fragments of them are handled).
    UnsupportedProtocol = 21 => "unsupported-protocol",
    /// I/O: the egress interface has no socket on this worker.
    TxNoSocket = 22 => "tx-no-socket",
    /// I/O: the frame could not be queued for transmit (TX ring full, no free UMEM frame for
    /// a copy).
    TxFailed = 23 => "tx-failed",
    /// I/O: the worker that owns the frame's flow could not take it (its hand-off queue was
    /// full, or no free hand-off batch).
    HandoffFull = 24 => "handoff-full",
    /// I/O: the frame is longer than a hand-off buffer.
    HandoffTooLong = 25 => "handoff-too-long",
    /// I/O: handed-in frames left over from a burst that panicked.
    HandoffAbandoned = 26 => "handoff-abandoned",
    /// The worker: frames of a burst whose processing panicked (caught; the worker went on).
    WorkerPanic = 27 => "worker-panic",
    /// I/O: the pipeline passes the frame to the kernel, but a steered frame has no way back
    /// into the kernel's stack (the XDP program passes host traffic itself).
    PassUnavailable = 28 => "pass-unavailable",
    /// Frame longer than 65,535 bytes: no link delivers one, and the parsed offsets are 16 bits.
    FrameTooLong = 29 => "frame-too-long",
    /// A `Local` traffic policy and no backend on this node, while the service has backends
    /// elsewhere: dropped, not rejected (kube-proxy's "has no local endpoints" DROP rule).
    NoLocalBackend = 30 => "no-local-backend",
    /// A LoadBalancer VIP's client outside the service's `load_balancer_source_ranges`.
    SourceRangeDenied = 31 => "source-range-denied",
    /// I/O: the egress interface is gone (deleted, or moved out of the node's namespace); its
    /// sockets are closed down until it is re-created and re-attached.
    IfaceDown = 32 => "iface-down",
    /// A new flow needs source NAT (masquerade, hairpin, or a reply-tuple clash) and no source
    /// port of `node.snat_port_range` gives it a reply tuple that is free (see `snat.rs`).
    SnatExhausted = 33 => "snat-exhausted",
    /// A new flow needs masquerading to a node IP, and the node has none of the flow's address
    /// family (`node.node_ips`); or its masquerade address needs a cell of the process-wide
    /// table (`conntrack::SnatAddrs`) and all 64 are named by live flows of other addresses.
    SnatNoAddress = 34 => "snat-no-address",
    /// The packet is larger than its egress interface's MTU and may not be fragmented (IPv4
    /// with DF, every IPv6 packet): answered with an ICMP fragmentation-needed / ICMPv6
    /// packet-too-big carrying the MTU, as a router does (`crate::mtu`).
    FragNeeded = 35 => "frag-needed",
    /// An IPv4 packet without DF larger than its egress interface's MTU: not fragmented by
    /// nodeplane (`crate::mtu`: its senders set DF on anything they did not fragment).
    MtuExceeded = 36 => "mtu-exceeded",
    /// I/O (`io.afxdp.fast_path: tc`): a frame on the slow-path interface whose destination
    /// MAC names no interface of the state (`crate::offload::ifindex_from_slow_path_mac`).
    SlowPathUnknown = 37 => "slow-path-unknown",
}

/// Size of the per-reason counter arrays (index = numeric value): room for every reason and a
/// few more, so that adding one does not resize every array again.
pub const DROP_REASON_SLOTS: usize = 48;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_fit_the_counter_array() {
        for r in DropReason::ALL {
            assert_eq!(DropReason::from_name(r.name()), Some(*r));
            assert!((*r as usize) < DROP_REASON_SLOTS);
        }
        assert_eq!(DropReason::from_name("no-such-reason"), None);
    }
}
