//! What several pipeline test files share.

use std::net::IpAddr;

use nodeplane_state::{example, Backend, BackendState, State};

/// A pod on another node: `web-nodeport`'s only backend in [`remote_nodeport`].
pub const REMOTE: [u8; 4] = [10, 244, 2, 5];

/// The example node, with `edit` applied and `web-nodeport`'s only backend on another node
/// ([`REMOTE`]:8080, no affinity), so that its NodePort flows are source-NATed.
pub fn remote_nodeport(edit: impl FnOnce(&mut State)) -> State {
    let mut s = example::state().unwrap();
    edit(&mut s);
    let svc = s
        .services
        .iter_mut()
        .find(|v| v.name == "web-nodeport")
        .unwrap();
    svc.affinity = None;
    svc.backends = vec![Backend {
        ip: IpAddr::from(REMOTE),
        port: 8080,
        weight: 1,
        state: BackendState::Active,
        ready: None,
        serving: None,
        terminating: None,
    }];
    nodeplane_state::validate(&s).expect("valid state");
    s
}
