//! Identity policy, compiled per local endpoint and direction.
//!
//! Semantics (the same as Cilium's for the features we carry): an endpoint with no rule in a
//! direction allows everything in that direction; with at least one rule it is default-deny;
//! a matching deny rule wins over any matching allow rule. Policy is evaluated once per flow
//! (and again when a new state generation is published); replies of an allowed flow are allowed
//! by conntrack, not by rules.

use nodeplane_state::{Rule, RuleAction, RuleProto};

use crate::flow::{Addr, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

/// The verdict recorded on a packet and a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyVerdict {
    /// No policy applied (no rules for the endpoint(s), allow-all mode, or not evaluated).
    #[default]
    None,
    Allow,
    Deny,
    /// Would be denied; forwarded because the node is in audit mode.
    Audit,
}

impl PolicyVerdict {
    pub fn name(self) -> &'static str {
        match self {
            PolicyVerdict::None => "none",
            PolicyVerdict::Allow => "allow",
            PolicyVerdict::Deny => "deny",
            PolicyVerdict::Audit => "audit",
        }
    }
}

/// Which rule decided (for `explain`): index into the direction's rule list as written in the
/// state, or `None` for the default deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow { rule: usize },
    Deny { rule: Option<usize> },
}

#[derive(Debug, Clone)]
struct CompiledRule {
    /// Position in the state's rule list.
    index: usize,
    deny: bool,
    any_peer: bool,
    /// Sorted, for binary search.
    identities: Vec<u32>,
    cidrs: Vec<(Addr, u8)>,
    /// 0 = any protocol.
    proto: u8,
    /// Empty = any port.
    ports: Vec<(u16, u16)>,
}

/// Up to this many rules a scan costs less than the index's search and merge.
const SCAN_MAX: usize = 8;

/// The rules of one endpoint in one direction; deny rules first.
///
/// A new flow's decision is the first rule, in that order, that matches it. So that the cost
/// does not grow with the number of rules (10k rules per endpoint are seen in large clusters),
/// the rules are indexed by the peer identities they name: a flow looks at the rules naming
/// its peer's identity and at the few that name no identity (any peer, or CIDRs), merged in
/// rule order. Nothing is allocated per flow.
#[derive(Debug, Clone, Default)]
pub struct DirPolicy {
    rules: Vec<CompiledRule>,
    /// Sorted by identity: each identity named by a rule, and where its rule positions start in
    /// `by_identity_rules` (they run to the next entry's start).
    by_identity: Vec<(u32, u32)>,
    /// Positions in `rules`, ascending within each identity's run.
    by_identity_rules: Vec<u32>,
    /// Positions of the rules that must be checked for any identity, ascending.
    generic: Vec<u32>,
}

impl DirPolicy {
    pub fn compile(rules: &[Rule]) -> Option<DirPolicy> {
        if rules.is_empty() {
            return None;
        }
        let mut out: Vec<CompiledRule> = rules
            .iter()
            .enumerate()
            .map(|(index, r)| {
                let mut identities = r.identities.clone();
                identities.sort_unstable();
                CompiledRule {
                    index,
                    deny: r.action == RuleAction::Deny,
                    any_peer: r.identities.is_empty() && r.cidrs.is_empty(),
                    identities,
                    cidrs: r
                        .cidrs
                        .iter()
                        .map(|c| (Addr::from(c.network()), c.prefix_len()))
                        .collect(),
                    proto: match r.protocol {
                        RuleProto::Any => 0,
                        RuleProto::TCP => PROTO_TCP,
                        RuleProto::UDP => PROTO_UDP,
                        RuleProto::ICMP => PROTO_ICMP,
                    },
                    ports: r.ports.iter().map(|p| (p.port, p.end())).collect(),
                }
            })
            .collect();
        // Stable: deny rules first, each group in the order written.
        out.sort_by_key(|r| !r.deny);
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        let mut generic = Vec::new();
        for (pos, r) in out.iter().enumerate() {
            if r.any_peer || !r.cidrs.is_empty() {
                generic.push(pos as u32);
            }
            let mut last = None;
            for id in &r.identities {
                if last != Some(*id) {
                    pairs.push((*id, pos as u32));
                    last = Some(*id);
                }
            }
        }
        pairs.sort_unstable();
        let mut by_identity: Vec<(u32, u32)> = Vec::new();
        let mut by_identity_rules = Vec::with_capacity(pairs.len());
        for (id, pos) in pairs {
            if by_identity.last().map(|e| e.0) != Some(id) {
                by_identity.push((id, by_identity_rules.len() as u32));
            }
            by_identity_rules.push(pos);
        }
        Some(DirPolicy {
            rules: out,
            by_identity,
            by_identity_rules,
            generic,
        })
    }

    /// The positions of the rules naming `identity`, ascending.
    fn named(&self, identity: u32) -> &[u32] {
        match self.by_identity.binary_search_by_key(&identity, |e| e.0) {
            Ok(i) => {
                let start = self.by_identity[i].1 as usize;
                let end = self
                    .by_identity
                    .get(i + 1)
                    .map_or(self.by_identity_rules.len(), |e| e.1 as usize);
                &self.by_identity_rules[start..end]
            }
            Err(_) => &[],
        }
    }

    /// Reads what [`Self::decide`] reads first, for a look-ahead that wants it in cache before
    /// the decision (`pipeline/syn.rs`, a new flow's chain of dependent misses with many
    /// endpoints): `step` 0, the first rule; any other, that rule's port and identity lists.
    /// Returns a word of what it read (to be kept by `black_box`).
    #[inline]
    pub fn warm(&self, step: u8) -> u32 {
        let Some(r) = self.rules.first() else {
            return 0;
        };
        if step == 0 {
            return u32::from(r.proto);
        }
        r.ports.first().map_or(0, |p| u32::from(p.0)) ^ r.identities.first().copied().unwrap_or(0)
    }

    /// Evaluates a new flow: `remote` is the peer's address and identity, `dport` the
    /// destination port after service translation (policy is on the backend's port).
    #[inline]
    pub fn decide(&self, remote: Addr, remote_identity: u32, proto: u8, dport: u16) -> Decision {
        if self.rules.len() <= SCAN_MAX {
            return self.decide_by_scan(remote, remote_identity, proto, dport);
        }
        self.decide_indexed(remote, remote_identity, proto, dport)
    }

    fn decide_indexed(
        &self,
        remote: Addr,
        remote_identity: u32,
        proto: u8,
        dport: u16,
    ) -> Decision {
        // The two candidate lists merged in rule order; deny rules come first, so the first
        // match settles it.
        let (mut a, mut b) = (self.named(remote_identity), self.generic.as_slice());
        loop {
            let pos = match (a.first(), b.first()) {
                (Some(&x), Some(&y)) if x == y => {
                    (a, b) = (&a[1..], &b[1..]);
                    x
                }
                (Some(&x), Some(&y)) if x < y => {
                    a = &a[1..];
                    x
                }
                (_, Some(&y)) => {
                    b = &b[1..];
                    y
                }
                (Some(&x), None) => {
                    a = &a[1..];
                    x
                }
                (None, None) => return Decision::Deny { rule: None },
            };
            let r = &self.rules[pos as usize];
            if r.matches(remote, remote_identity, proto, dport) {
                return if r.deny {
                    Decision::Deny {
                        rule: Some(r.index),
                    }
                } else {
                    Decision::Allow { rule: r.index }
                };
            }
        }
    }

    /// The same decision by a scan of every rule: the definition the index must agree with,
    /// and the cheaper way for a few rules.
    #[inline]
    fn decide_by_scan(&self, remote: Addr, identity: u32, proto: u8, dport: u16) -> Decision {
        match self
            .rules
            .iter()
            .find(|r| r.matches(remote, identity, proto, dport))
        {
            Some(r) if r.deny => Decision::Deny {
                rule: Some(r.index),
            },
            Some(r) => Decision::Allow { rule: r.index },
            None => Decision::Deny { rule: None },
        }
    }
}

impl CompiledRule {
    #[inline]
    fn matches(&self, remote: Addr, identity: u32, proto: u8, dport: u16) -> bool {
        if self.proto != 0 {
            let p = if proto == PROTO_ICMPV6 {
                PROTO_ICMP
            } else {
                proto
            };
            if p != self.proto {
                return false;
            }
        }
        if !self.ports.is_empty()
            && !self
                .ports
                .iter()
                .any(|(lo, hi)| dport >= *lo && dport <= *hi)
        {
            return false;
        }
        self.any_peer
            || self.identities.binary_search(&identity).is_ok()
            || self
                .cidrs
                .iter()
                .any(|(net, len)| net.v6 == remote.v6 && remote.masked(*len) == *net)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeplane_state::PortRange;

    fn rule(action: RuleAction, ids: &[u32], proto: RuleProto, ports: &[(u16, u16)]) -> Rule {
        Rule {
            action,
            identities: ids.to_vec(),
            cidrs: vec![],
            protocol: proto,
            ports: ports
                .iter()
                .map(|(a, b)| PortRange {
                    port: *a,
                    end_port: (a != b).then_some(*b),
                })
                .collect(),
        }
    }

    #[test]
    fn no_rules_means_no_policy() {
        assert!(DirPolicy::compile(&[]).is_none());
    }

    #[test]
    fn deny_wins_and_default_deny() {
        let p = DirPolicy::compile(&[
            rule(RuleAction::Allow, &[1001], RuleProto::TCP, &[]),
            rule(RuleAction::Deny, &[1001], RuleProto::TCP, &[(9000, 9100)]),
        ])
        .unwrap();
        let a = Addr::v4([10, 244, 1, 10]);
        assert_eq!(
            p.decide(a, 1001, PROTO_TCP, 80),
            Decision::Allow { rule: 0 }
        );
        assert_eq!(
            p.decide(a, 1001, PROTO_TCP, 9050),
            Decision::Deny { rule: Some(1) }
        );
        assert_eq!(
            p.decide(a, 1002, PROTO_TCP, 80),
            Decision::Deny { rule: None }
        );
        assert_eq!(
            p.decide(a, 1001, PROTO_UDP, 80),
            Decision::Deny { rule: None }
        );
    }

    #[test]
    fn cidr_peers_and_icmp_covers_icmpv6() {
        let p = DirPolicy::compile(&[Rule {
            action: RuleAction::Allow,
            identities: vec![],
            cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            protocol: RuleProto::ICMP,
            ports: vec![],
        }])
        .unwrap();
        assert!(matches!(
            p.decide(Addr::v4([10, 1, 2, 3]), 2, PROTO_ICMP, 0),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            p.decide(Addr::v4([11, 1, 2, 3]), 2, PROTO_ICMP, 0),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn the_index_decides_like_a_scan_of_every_rule() {
        // Rules mixing identities, CIDRs, any-peer, deny and allow, protocols and ports; every
        // (identity, address, protocol, port) probe must get the scan's decision.
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for _ in 0..50 {
            let rules: Vec<Rule> = (0..1 + next() % 40)
                .map(|_| {
                    let ids: Vec<u32> = (0..next() % 3).map(|_| 1 + (next() % 6) as u32).collect();
                    let cidrs = if next() % 5 == 0 {
                        vec!["10.1.0.0/16".parse().unwrap()]
                    } else {
                        vec![]
                    };
                    let lo = 70 + (next() % 20) as u16;
                    Rule {
                        action: if next() % 4 == 0 {
                            RuleAction::Deny
                        } else {
                            RuleAction::Allow
                        },
                        identities: ids,
                        cidrs,
                        protocol: [RuleProto::Any, RuleProto::TCP, RuleProto::UDP]
                            [next() as usize % 3],
                        ports: if next() % 3 == 0 {
                            vec![]
                        } else {
                            vec![PortRange {
                                port: lo,
                                end_port: Some(lo + (next() % 5) as u16),
                            }]
                        },
                    }
                })
                .collect();
            let p = DirPolicy::compile(&rules).unwrap();
            for id in 0..8 {
                for addr in [Addr::v4([10, 1, 2, 3]), Addr::v4([10, 2, 2, 3])] {
                    for proto in [PROTO_TCP, PROTO_UDP] {
                        for port in 68..100 {
                            assert_eq!(
                                p.decide_indexed(addr, id, proto, port),
                                p.decide_by_scan(addr, id, proto, port),
                                "rules {rules:?} identity {id} port {port}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ten_thousand_rules_look_at_only_the_peer_s_own() {
        let mut rules: Vec<Rule> = (0..10_000)
            .map(|j| {
                rule(
                    RuleAction::Allow,
                    &[30_000 + j],
                    RuleProto::TCP,
                    &[(9000, 9000)],
                )
            })
            .collect();
        rules.push(rule(
            RuleAction::Allow,
            &[1001],
            RuleProto::TCP,
            &[(8080, 8080)],
        ));
        let p = DirPolicy::compile(&rules).unwrap();
        assert_eq!(p.named(1001), &[10_000]);
        assert!(p.generic.is_empty());
        let a = Addr::v4([10, 244, 0, 10]);
        assert_eq!(
            p.decide(a, 1001, PROTO_TCP, 8080),
            Decision::Allow { rule: 10_000 }
        );
        assert_eq!(
            p.decide(a, 1001, PROTO_TCP, 9000),
            Decision::Deny { rule: None }
        );
    }
}
