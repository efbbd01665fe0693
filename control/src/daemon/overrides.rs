//! Runtime overrides: inputs the control thread merges into the source's desired state before
//! compiling it. They come from the node itself (today: the uplink gateway's MAC from the
//! kernel's neighbour table, reported by the AF_XDP neighbour watcher through the event loop),
//! never from the state store, and they never change what the source sent: `status`,
//! `policy get` and `identity list` show the source's state; the tables carry the overrides.
//!
//! Precedence for the uplink's `gateway_mac`: the kernel's (a live, resolved neighbour) over
//! the state's static value; with neither, the pipeline drops uplink-bound packets as
//! `no-neighbor` (counted).

use std::borrow::Cow;

use nodeplane_state::{InterfaceRole, MacAddr, State};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeOverrides {
    /// The uplink gateway's MAC as the kernel resolved it (`None`: unresolved or unknown).
    pub uplink_gateway_mac: Option<[u8; 6]>,
}

impl RuntimeOverrides {
    /// The state to compile: `state` itself when no override applies (no copy), else a copy
    /// with the overrides merged.
    pub fn apply<'a>(&self, state: &'a State) -> Cow<'a, State> {
        let Some(mac) = self.uplink_gateway_mac else {
            return Cow::Borrowed(state);
        };
        let has_uplink = state
            .interfaces
            .iter()
            .any(|i| i.role == InterfaceRole::Uplink && i.gateway_mac != Some(MacAddr(mac)));
        if !has_uplink {
            return Cow::Borrowed(state);
        }
        let mut s = state.clone();
        for i in &mut s.interfaces {
            if i.role == InterfaceRole::Uplink {
                i.gateway_mac = Some(MacAddr(mac));
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
        };
        assert!(matches!(same.apply(&state), Cow::Borrowed(_)));
    }
}
