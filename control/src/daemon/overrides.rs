//! Runtime overrides: inputs the control thread merges into the source's desired state before
//! compiling it. They come from the node itself (the uplink gateway's MAC from the kernel's
//! neighbour table, reported by the AF_XDP neighbour watcher through the event loop; each
//! interface's MTU as the kernel has it, read by the AF_XDP backend at every publication and
//! at every link notification), never from the state store, and they never change what the
//! source sent: `status`, `policy get` and `identity list` show the source's state; the tables
//! carry the overrides.
//!
//! Precedence for the uplink's `gateway_mac`: the kernel's (a live, resolved neighbour) over
//! the state's static value; with neither, the pipeline drops uplink-bound packets as
//! `no-neighbor` (counted). For an interface's `mtu`: the kernel's over the state's; with
//! neither, no MTU check on that interface.

use std::borrow::Cow;

use nodeplane_state::{InterfaceRole, MacAddr, State};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeOverrides {
    /// The uplink gateway's MAC as the kernel resolved it (`None`: unresolved or unknown).
    pub uplink_gateway_mac: Option<[u8; 6]>,
    /// Interfaces' MTUs as the kernel has them (name → MTU; an interface not listed keeps the
    /// state's).
    pub mtus: Vec<(String, u16)>,
}

impl RuntimeOverrides {
    /// The state to compile: `state` itself when no override applies (no copy), else a copy
    /// with the overrides merged.
    pub fn apply<'a>(&self, state: &'a State) -> Cow<'a, State> {
        let mtu_of = |name: &str| self.mtus.iter().find(|(n, _)| n == name).map(|(_, m)| *m);
        let mac_differs = |i: &nodeplane_state::Interface| {
            self.uplink_gateway_mac.is_some_and(|mac| {
                i.role == InterfaceRole::Uplink && i.gateway_mac != Some(MacAddr(mac))
            })
        };
        let mtu_differs =
            |i: &nodeplane_state::Interface| mtu_of(&i.name).is_some_and(|m| i.mtu != Some(m));
        if !state
            .interfaces
            .iter()
            .any(|i| mac_differs(i) || mtu_differs(i))
        {
            return Cow::Borrowed(state);
        }
        let mut s = state.clone();
        for i in &mut s.interfaces {
            if let (Some(mac), InterfaceRole::Uplink) = (self.uplink_gateway_mac, i.role) {
                i.gateway_mac = Some(MacAddr(mac));
            }
            if let Some(m) = mtu_of(&i.name) {
                i.mtu = Some(m);
            }
        }
        Cow::Owned(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uplink_mac(s: &State) -> Option<MacAddr> {
        s.interfaces
            .iter()
            .find(|i| i.role == InterfaceRole::Uplink)
            .and_then(|i| i.gateway_mac)
    }

    #[test]
    fn kernel_mac_wins_over_the_state_and_none_keeps_the_state() {
        let state = nodeplane_state::example::state().unwrap();
        let static_mac = uplink_mac(&state);
        assert!(static_mac.is_some(), "the example has a static gateway MAC");
        let none = RuntimeOverrides::default();
        assert!(matches!(none.apply(&state), Cow::Borrowed(_)));
        assert_eq!(uplink_mac(&none.apply(&state)), static_mac);

        let k = [2, 0, 0, 0, 0, 0x42];
        let o = RuntimeOverrides {
            uplink_gateway_mac: Some(k),
            ..RuntimeOverrides::default()
        };
        let eff = o.apply(&state);
        assert_eq!(uplink_mac(&eff), Some(MacAddr(k)));
        // Nothing else changes; the source's state is untouched.
        assert_eq!(eff.services, state.services);
        assert_eq!(uplink_mac(&state), static_mac);
        // Pod interfaces keep no gateway.
        for (a, b) in eff.interfaces.iter().zip(&state.interfaces) {
            if a.role != InterfaceRole::Uplink {
                assert_eq!(a, b);
            }
        }
        // Already equal: no copy.
        let same = RuntimeOverrides {
            uplink_gateway_mac: static_mac.map(|m| m.0),
            ..RuntimeOverrides::default()
        };
        assert!(matches!(same.apply(&state), Cow::Borrowed(_)));
    }

    #[test]
    fn kernel_mtus_win_over_the_state_per_interface() {
        let state = nodeplane_state::example::state().unwrap();
        let mtu = |s: &State, n: &str| s.interfaces.iter().find(|i| i.name == n).unwrap().mtu;
        let o = RuntimeOverrides {
            mtus: vec![("uplink0".into(), 1500), ("pod-client".into(), 9000)],
            ..RuntimeOverrides::default()
        };
        let eff = o.apply(&state);
        assert_eq!(mtu(&eff, "uplink0"), Some(1500));
        assert_eq!(mtu(&eff, "pod-client"), Some(9000));
        assert_eq!(
            mtu(&eff, "pod-web1"),
            mtu(&state, "pod-web1"),
            "not listed: the state's"
        );
        assert_eq!(mtu(&state, "uplink0"), None, "the source's state untouched");
        // Applied once, the same overrides change nothing more: no copy.
        let again = o.apply(&eff);
        assert!(matches!(again, Cow::Borrowed(_)));
    }
}
