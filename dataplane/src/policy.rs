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

/// The rules of one endpoint in one direction; deny rules first.
#[derive(Debug, Clone, Default)]
pub struct DirPolicy {
    rules: Vec<CompiledRule>,
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
        Some(DirPolicy { rules: out })
    }

    /// Evaluates a new flow: `remote` is the peer's address and identity, `dport` the
    /// destination port after service translation (policy is on the backend's port).
    pub fn decide(&self, remote: Addr, remote_identity: u32, proto: u8, dport: u16) -> Decision {
        let mut allow = None;
        for r in &self.rules {
            if !r.matches(remote, remote_identity, proto, dport) {
                continue;
            }
            if r.deny {
                return Decision::Deny {
                    rule: Some(r.index),
                };
            }
            if allow.is_none() {
                allow = Some(r.index);
                // Deny rules come first, so the first allow match settles it.
                break;
            }
        }
        match allow {
            Some(rule) => Decision::Allow { rule },
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
}
