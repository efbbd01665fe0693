//! The workers' [`FlowMap`] over the kernel's `np_flows` map (`io.afxdp.fast_path: tc`): the
//! dataplane's offer types encoded as the TC program's key and action (`xdp-redirect`'s
//! `flows.rs`), through batches the worker reuses (nothing allocated per call).

use std::io;

use nodeplane_dataplane::offload::{FlowMap, OffloadAction, OffloadKey};
use nodeplane_xdp::{
    FlowAction, FlowKey, FlowTable, FLOW_DEC_TTL, FLOW_NAT_DST, FLOW_NAT_SRC, FLOW_PEER,
};

/// Offers a worker batches per call at most (its per-burst batches are smaller).
const BATCH: usize = 1024;

/// One worker's handle on `np_flows`, with its encoding buffers.
#[derive(Debug)]
pub struct KernelFlows {
    table: FlowTable,
    keys: Vec<FlowKey>,
    actions: Vec<FlowAction>,
}

impl KernelFlows {
    pub fn new(table: FlowTable) -> KernelFlows {
        KernelFlows {
            table,
            keys: Vec::with_capacity(BATCH),
            actions: Vec::with_capacity(BATCH),
        }
    }
}

/// The map's key: ports in network byte order (as the program reads them off the wire).
pub fn key(k: &OffloadKey) -> FlowKey {
    FlowKey {
        ifindex: k.ifindex,
        proto: k.proto,
        family: if k.v6 { 6 } else { 4 },
        _pad: 0,
        src: k.src,
        dst: k.dst,
        sport: k.sport.to_be(),
        dport: k.dport.to_be(),
    }
}

/// The map's action; the program writes the counters and `last_seen_ns`.
pub fn action(a: &OffloadAction) -> FlowAction {
    let mut flags = 0;
    for (on, bit) in [
        (a.peer, FLOW_PEER),
        (a.dec_ttl, FLOW_DEC_TTL),
        (a.nat_src, FLOW_NAT_SRC),
        (a.nat_dst, FLOW_NAT_DST),
    ] {
        if on {
            flags |= bit;
        }
    }
    FlowAction {
        src: a.src,
        dst: a.dst,
        sport: a.sport.to_be(),
        dport: a.dport.to_be(),
        egress_ifindex: a.egress_ifindex,
        dmac: a.dmac,
        smac: a.smac,
        flags,
        generation: a.generation,
        ..FlowAction::default()
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds (`bpf_ktime_get_ns`'s clock).
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl FlowMap for KernelFlows {
    fn insert(&mut self, keys: &[OffloadKey], actions: &[OffloadAction]) -> io::Result<usize> {
        let mut done = 0;
        for (ks, acts) in keys.chunks(BATCH).zip(actions.chunks(BATCH)) {
            self.keys.clear();
            self.actions.clear();
            self.keys.extend(ks.iter().map(key));
            self.actions.extend(acts.iter().map(action));
            done += self.table.insert_batch(&self.keys, &self.actions)?;
        }
        Ok(done)
    }

    fn remove(&mut self, keys: &[OffloadKey]) -> io::Result<usize> {
        let mut done = 0;
        for ks in keys.chunks(BATCH) {
            self.keys.clear();
            self.keys.extend(ks.iter().map(key));
            done += self.table.remove_batch(&self.keys)?;
        }
        Ok(done)
    }

    fn last_seen_age(&self, k: &OffloadKey) -> io::Result<Option<u64>> {
        Ok(match self.table.last_seen(&key(k))? {
            // 0: never forwarded by the kernel since it was offered.
            Some(0) | None => None,
            Some(t) => Some(monotonic_ns().saturating_sub(t)),
        })
    }

    fn clear(&mut self) -> io::Result<usize> {
        self.table.clear()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_encoded_as_the_program_reads_them() {
        let k = key(&OffloadKey {
            ifindex: 7,
            proto: 6,
            v6: false,
            src: [10, 244, 1, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 96, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport: 40000,
            dport: 80,
        });
        assert_eq!((k.ifindex, k.proto, k.family, k._pad), (7, 6, 4, 0));
        // As the bytes of the wire's port fields read in place.
        assert_eq!(k.dport.to_ne_bytes(), [0, 80]);
        assert_eq!(k.sport.to_ne_bytes(), 40000u16.to_be_bytes());
        let a = action(&OffloadAction {
            dport: 8080,
            peer: true,
            dec_ttl: true,
            nat_dst: true,
            generation: 3,
            ..OffloadAction::default()
        });
        assert_eq!(a.flags, FLOW_PEER | FLOW_DEC_TTL | FLOW_NAT_DST);
        assert_eq!(a.dport.to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!((a.generation, a.last_seen_ns, a.packets), (3, 0, 0));
        let v6 = key(&OffloadKey {
            v6: true,
            ..OffloadKey::default()
        });
        assert_eq!(v6.family, 6);
    }

    #[test]
    fn the_worker_reads_the_slow_path_mac_the_program_writes() {
        for i in [1u32, 2, 300, 0xabcdef] {
            let mac = nodeplane_xdp::slow_path_mac(i);
            assert_eq!(
                nodeplane_dataplane::offload::ifindex_from_slow_path_mac(&mac),
                nodeplane_xdp::ifindex_from_slow_path_mac(&mac)
            );
        }
        let other = [2, 0, 0, 0, 1, 1];
        assert_eq!(
            nodeplane_dataplane::offload::ifindex_from_slow_path_mac(&other),
            None
        );
    }
}
