//! Health check node ports: kube-proxy's contract with cloud load balancers for services with
//! `external_traffic_policy: Local` (pkg/proxy/healthcheck). For each such LoadBalancer service
//! with a `health_check_node_port`, an HTTP/1.1 server on that port (every address of the node:
//! `[::]`, or `0.0.0.0` without IPv6) answers any request with
//!
//! ```text
//! 200 OK                    while the node has a ready local backend of the service
//! 503 Service Unavailable   otherwise (or while a worker of this node is dead)
//! Content-Type: application/json
//! X-Content-Type-Options: nosniff
//! X-Load-Balancing-Endpoint-Weight: <local endpoints>
//!
//! {"service":{"namespace":"ns","name":"web"},"localEndpoints":1,"serviceProxyHealthy":true}
//! ```
//!
//! so a load balancer sends the service's traffic only to nodes that serve it locally. Serving
//! terminating backends do not count: a node whose local backends are all terminating reports
//! 503 and is drained (KEP-1669). The counts are replaced at every publication ([`update`]).
//!
//! One thread serves every port (non-blocking accepts, polled every 20 ms; one short request
//! at a time with 1 s timeouts): health checks come a few times a second per load balancer.
//! A port that cannot be bound is logged (rate-limited) and tried again at the next
//! publication. Nothing here is on the packet path.
//!
//! [`update`]: HealthChecks::update

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use nodeplane_dataplane::Tables;

use crate::api::HealthCheckPort;

const POLL: Duration = Duration::from_millis(20);
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes of a request read at most (the request is not interpreted: any path gets the answer).
const MAX_REQUEST: usize = 4096;

/// One port's service and its count of ready local backends.
#[derive(Debug)]
struct Port {
    service: String,
    local: usize,
    listener: Option<TcpListener>,
}

#[derive(Debug, Default)]
struct Shared {
    ports: BTreeMap<u16, Port>,
    /// `serviceProxyHealthy`: false once a worker of this node died.
    proxy_healthy: bool,
    stop: bool,
}

/// The health check servers of the running state.
#[derive(Debug)]
pub struct HealthChecks {
    shared: Arc<Mutex<Shared>>,
    thread: Option<JoinHandle<()>>,
    /// Where the ports listen: every address by default (tests: loopback).
    bind: Option<IpAddr>,
}

impl Default for HealthChecks {
    fn default() -> Self {
        HealthChecks::new(None)
    }
}

impl HealthChecks {
    /// `bind`: the address to listen on (`None`: `[::]`, falling back to `0.0.0.0`).
    pub fn new(bind: Option<IpAddr>) -> HealthChecks {
        HealthChecks {
            shared: Arc::new(Mutex::new(Shared {
                proxy_healthy: true,
                ..Shared::default()
            })),
            thread: None,
            bind,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock cannot leave the map inconsistent (plain inserts).
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ports and counts of newly published tables: opens the new ports, closes the ports
    /// no service has any more, replaces the counts.
    pub fn update(&mut self, tables: &Tables) {
        let want: BTreeMap<u16, (String, usize)> = tables
            .services
            .iter()
            .filter(|s| s.external_local)
            .filter_map(|s| {
                s.health_check_node_port
                    .map(|p| (p, (s.name.clone(), s.local_ready())))
            })
            .collect();
        let bind = self.bind;
        let mut sh = self.lock();
        sh.ports.retain(|p, _| want.contains_key(p));
        for (port, (service, local)) in want {
            let e = sh.ports.entry(port).or_insert_with(|| Port {
                service: service.clone(),
                local,
                listener: None,
            });
            e.service = service;
            e.local = local;
            if e.listener.is_none() {
                match listen(bind, port) {
                    Ok(l) => e.listener = Some(l),
                    Err(err) => crate::error_limited!(
                        "healthcheck-bind",
                        "health check node port {port} of service {}: cannot listen: {err} (tried again at the next publication)",
                        e.service
                    ),
                }
            }
        }
        let idle = sh.ports.is_empty();
        drop(sh);
        if !idle && self.thread.is_none() {
            let shared = Arc::clone(&self.shared);
            match std::thread::Builder::new()
                .name("healthcheck".into())
                .spawn(move || serve(&shared))
            {
                Ok(j) => self.thread = Some(j),
                Err(e) => log::error!("cannot start the health check thread: {e}"),
            }
        }
    }

    /// `serviceProxyHealthy` in every answer (false once a worker died: every port says 503).
    pub fn set_proxy_healthy(&mut self, healthy: bool) {
        self.lock().proxy_healthy = healthy;
    }

    /// The ports of the running state, with their service, local count and whether they
    /// listen (status, tests).
    pub fn ports(&self) -> Vec<HealthCheckPort> {
        self.lock()
            .ports
            .iter()
            .map(|(p, e)| HealthCheckPort {
                port: *p,
                service: e.service.clone(),
                local_endpoints: e.local,
                listening: e.listener.is_some(),
            })
            .collect()
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        self.lock().stop = true;
        if let Some(j) = self.thread.take() {
            let _ = j.join();
        }
    }
}

fn listen(bind: Option<IpAddr>, port: u16) -> std::io::Result<TcpListener> {
    let l = match bind {
        Some(ip) => TcpListener::bind(SocketAddr::new(ip, port))?,
        // `[::]` takes IPv4 too (v4-mapped) unless the host set bindv6only.
        None => TcpListener::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
            .or_else(|_| TcpListener::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)))?,
    };
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The thread: accept on every port, answer, until stopped.
fn serve(shared: &Mutex<Shared>) {
    loop {
        let mut accepted = Vec::new();
        {
            let sh = shared.lock().unwrap_or_else(|p| p.into_inner());
            if sh.stop {
                return;
            }
            for e in sh.ports.values() {
                let Some(l) = &e.listener else { continue };
                while let Ok((s, _)) = l.accept() {
                    accepted.push((s, e.service.clone(), e.local, sh.proxy_healthy));
                }
            }
        }
        if accepted.is_empty() {
            std::thread::sleep(POLL);
        }
        for (s, service, local, healthy) in accepted {
            if let Err(e) = answer(s, &service, local, healthy) {
                log::debug!("health check of {service}: {e}");
            }
        }
    }
}

/// Reads the request head (not interpreted) and writes the answer.
fn answer(mut s: TcpStream, service: &str, local: usize, healthy: bool) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; MAX_REQUEST];
    let mut n = 0;
    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    s.write_all(response(service, local, healthy).as_bytes())?;
    s.flush()
}

/// The HTTP response for a service with `local` ready local backends.
pub fn response(service: &str, local: usize, healthy: bool) -> String {
    let (namespace, name) = service.split_once('/').unwrap_or(("", service));
    let body = serde_json::json!({
        "service": {"namespace": namespace, "name": name},
        "localEndpoints": local,
        "serviceProxyHealthy": healthy,
    })
    .to_string();
    let status = if local > 0 && healthy {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n\
         X-Load-Balancing-Endpoint-Weight: {local}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodeplane_dataplane::MaglevCache;
    use nodeplane_state::{Backend, BackendState, State, TrafficPolicy};

    fn get(port: u16) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// The example node with `web-lb` made externalTrafficPolicy: Local on `port`, its
    /// backends on this node as listed (web-1 10.244.1.21 is a local endpoint).
    fn state(port: u16, backends: Vec<Backend>) -> State {
        let mut s = nodeplane_state::example::state().unwrap();
        let lb = s.services.iter_mut().find(|s| s.name == "web-lb").unwrap();
        lb.external_traffic_policy = TrafficPolicy::Local;
        lb.health_check_node_port = Some(port);
        lb.backends = backends;
        s
    }

    fn be(ip: &str, terminating: bool) -> Backend {
        Backend {
            ip: ip.parse().unwrap(),
            port: 8080,
            weight: 1,
            state: BackendState::Active,
            ready: None,
            serving: Some(true),
            terminating: Some(terminating),
        }
    }

    #[test]
    fn answers_200_with_local_endpoints_then_503_when_only_terminating_or_remote() {
        let port = free_port();
        let mut hc = HealthChecks::new(Some("127.0.0.1".parse().unwrap()));
        let mut cache = MaglevCache::default();
        let s = state(
            port,
            vec![be("10.244.1.21", false), be("10.244.2.9", false)],
        );
        hc.update(&Tables::build(&s, 1, &mut cache));
        let r = get(port);
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("X-Load-Balancing-Endpoint-Weight: 1\r\n"), "{r}");
        assert_eq!(
            hc.ports(),
            vec![HealthCheckPort {
                port,
                service: "web-lb".into(),
                local_endpoints: 1,
                listening: true,
            }],
            "what status shows"
        );
        assert!(
            r.ends_with(
                r#"{"localEndpoints":1,"service":{"name":"web-lb","namespace":""},"serviceProxyHealthy":true}"#
            ),
            "{r}"
        );

        // The local backend terminates (still serving): the node is to be drained.
        let s = state(port, vec![be("10.244.1.21", true), be("10.244.2.9", false)]);
        hc.update(&Tables::build(&s, 2, &mut cache));
        let r = get(port);
        assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r}");
        assert!(r.contains(r#""localEndpoints":0"#), "{r}");

        // Ready again, but a worker died: 503, serviceProxyHealthy false.
        let s = state(port, vec![be("10.244.1.21", false)]);
        hc.update(&Tables::build(&s, 3, &mut cache));
        hc.set_proxy_healthy(false);
        let r = get(port);
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains(r#""serviceProxyHealthy":false"#), "{r}");

        // The port goes away with the policy.
        let mut s = state(port, vec![be("10.244.1.21", false)]);
        s.services
            .iter_mut()
            .find(|s| s.name == "web-lb")
            .unwrap()
            .health_check_node_port = None;
        hc.update(&Tables::build(&s, 4, &mut cache));
        assert!(hc.ports().is_empty());
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port closed"
        );
    }

    #[test]
    fn namespace_and_name_split() {
        let r = response("shop/web", 2, true);
        assert!(
            r.contains(r#""service":{"name":"web","namespace":"shop"}"#),
            "{r}"
        );
        assert!(r.starts_with("HTTP/1.1 200 OK"));
    }
}
