//! The control socket server, driven by the control thread's mio event loop.
//!
//! Each connection has a bounded input buffer and an output buffer. A complete line is one
//! request: it is handed to the control thread's handler and the response line is queued.
//! Robustness rules (one bad client must not hurt the daemon or other clients):
//! - a line longer than [`MAX_REQUEST`] gets an error response and the connection is closed;
//! - a connection idle for [`IDLE_TIMEOUT`] (or with output unread that long) is closed;
//! - at most [`MAX_CLIENTS`] connections; more are answered with an error and closed;
//! - sockets are non-blocking: a client that stops reading only fills its own buffer.
//!
//! A request answered with [`Reply::HandOff`] (`observe`) takes its connection out of the
//! event loop: after its response line the connection is a stream served by another thread
//! (see `crate::events`), picked up with [`Server::take_handed`].

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use super::{Response, MAX_REQUEST};

pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CLIENTS: usize = 64;
/// Responses queued for a client that does not read them, at most.
const MAX_OUTPUT: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the control socket directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another nodeplane daemon is serving {path}")]
    InUse { path: PathBuf },
    #[error("cannot bind the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the handler answers to one request line.
#[derive(Debug)]
pub enum Reply {
    /// One response line; the connection takes further requests.
    Line(Response),
    /// Write this response line, then hand the connection over (as a blocking std stream) to
    /// whoever called [`Server::take_handed`], under this ticket.
    HandOff(Response, u64),
}

/// A connection handed over: its ticket and, unless it broke on the way, the stream (blocking
/// now) with the output still to be written to it first (at least the hand-off's response
/// line). The new owner writes it, not the event loop.
pub type Handed = (u64, Option<(std::os::unix::net::UnixStream, Vec<u8>)>);

#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    last_active: Instant,
    /// Close once the output is written.
    closing: bool,
    writable_armed: bool,
}

#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    listener: UnixListener,
    listener_token: Token,
    conns: HashMap<Token, Conn>,
    next: usize,
    first_conn_token: usize,
    handed: Vec<Handed>,
}

impl Server {
    /// Binds `path` (mode 0600). A stale socket file is replaced; a live one is an error.
    /// Connection tokens are allocated from `first_conn_token` up.
    pub fn bind(
        path: &Path,
        registry: &Registry,
        listener_token: Token,
        first_conn_token: usize,
    ) -> Result<Server, ServerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse {
                    path: path.to_path_buf(),
                });
            }
            let _ = std::fs::remove_file(path);
        }
        let bind = |source| ServerError::Bind {
            path: path.to_path_buf(),
            source,
        };
        // Root only, from the first instant clients can reach it: bound under a temporary
        // name (with the umask's mode), made 0600, then renamed into place (atomic). A socket
        // bound at `path` itself would be open to connections with the umask's mode until the
        // chmod, and a connection made then would outlive it.
        let tmp = path.with_file_name(format!(
            ".{}.{}.tmp",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let _ = std::fs::remove_file(&tmp);
        let mut listener = UnixListener::bind(&tmp).map_err(bind)?;
        let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(bind(e));
        }
        registry
            .register(&mut listener, listener_token, Interest::READABLE)
            .map_err(bind)?;
        Ok(Server {
            path: path.to_path_buf(),
            listener,
            listener_token,
            conns: HashMap::new(),
            next: first_conn_token,
            first_conn_token,
            handed: Vec::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this token is the listener's or one of the connections'.
    pub fn owns(&self, t: Token) -> bool {
        t == self.listener_token || t.0 >= self.first_conn_token
    }

    /// Handles a readiness event for a token [`Server::owns`].
    pub fn ready(
        &mut self,
        registry: &Registry,
        token: Token,
        handler: &mut dyn FnMut(&str) -> Reply,
    ) {
        if token == self.listener_token {
            self.accept(registry);
            return;
        }
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let mut dead = false;
        let mut hand_off = None;
        let mut buf = [0u8; 8192];
        'read: loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    dead = conn.output.is_empty();
                    conn.closing = true;
                    break;
                }
                Ok(n) => {
                    conn.last_active = Instant::now();
                    conn.input.extend_from_slice(&buf[..n]);
                    // Serve every complete line.
                    while let Some(pos) = conn.input.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = conn.input.drain(..=pos).collect();
                        let reply = match std::str::from_utf8(&line[..line.len() - 1]) {
                            Ok(text) if text.trim().is_empty() => continue,
                            Ok(text) => handler(text.trim_end_matches('\r')),
                            Err(_) => Reply::Line(Response::err("request is not UTF-8")),
                        };
                        match reply {
                            Reply::Line(resp) => {
                                conn.output.extend_from_slice(resp.to_line().as_bytes());
                            }
                            Reply::HandOff(resp, ticket) => {
                                conn.output.extend_from_slice(resp.to_line().as_bytes());
                                hand_off = Some(ticket);
                                break 'read;
                            }
                        }
                    }
                    if conn.input.len() > MAX_REQUEST {
                        let resp = Response::err(format!(
                            "request longer than {MAX_REQUEST} bytes; closing the connection"
                        ));
                        conn.output.extend_from_slice(resp.to_line().as_bytes());
                        conn.input.clear();
                        conn.closing = true;
                        break;
                    }
                    if conn.output.len() > MAX_OUTPUT {
                        dead = true;
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    dead = true;
                    break;
                }
            }
        }
        if let Some(ticket) = hand_off {
            let stream = self.conns.remove(&token).and_then(|mut c| {
                let _ = registry.deregister(&mut c.stream);
                let s = std::os::unix::net::UnixStream::from(c.stream);
                s.set_nonblocking(false).ok()?;
                Some((s, c.output))
            });
            self.handed.push((ticket, stream));
            return;
        }
        if !dead {
            dead = !flush(conn, registry, token);
        }
        if dead {
            self.close(registry, token);
        }
    }

    /// Connections handed over since the last call (see [`Reply::HandOff`]).
    pub fn take_handed(&mut self) -> Vec<Handed> {
        std::mem::take(&mut self.handed)
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`]. Call periodically.
    pub fn sweep(&mut self, registry: &Registry) {
        let stale: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.last_active.elapsed() > IDLE_TIMEOUT)
            .map(|(t, _)| *t)
            .collect();
        for t in stale {
            self.close(registry, t);
        }
    }

    pub fn clients(&self) -> usize {
        self.conns.len()
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.conns.len() >= MAX_CLIENTS {
                        let line = Response::err(format!(
                            "too many control clients (at most {MAX_CLIENTS}); try again"
                        ))
                        .to_line();
                        let _ = stream.write(line.as_bytes());
                        continue;
                    }
                    let token = Token(self.next);
                    self.next += 1;
                    if registry
                        .register(&mut stream, token, Interest::READABLE)
                        .is_err()
                    {
                        continue;
                    }
                    self.conns.insert(
                        token,
                        Conn {
                            stream,
                            input: Vec::new(),
                            output: Vec::new(),
                            last_active: Instant::now(),
                            closing: false,
                            writable_armed: false,
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like repeat at every readiness: limited.
                    crate::warn_limited!("control-accept", "control socket accept: {e}");
                    break;
                }
            }
        }
    }

    fn close(&mut self, registry: &Registry, token: Token) {
        if let Some(mut c) = self.conns.remove(&token) {
            let _ = registry.deregister(&mut c.stream);
        }
    }
}

/// Writes what the connection's output buffer holds. Returns false when the connection is
/// finished (closed by us after its last response, or broken).
fn flush(conn: &mut Conn, registry: &Registry, token: Token) -> bool {
    while !conn.output.is_empty() {
        match conn.stream.write(&conn.output) {
            Ok(0) => return false,
            Ok(n) => {
                conn.output.drain(..n);
                conn.last_active = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    if conn.output.is_empty() {
        if conn.closing {
            return false;
        }
        if conn.writable_armed {
            let _ = registry.reregister(&mut conn.stream, token, Interest::READABLE);
            conn.writable_armed = false;
        }
    } else if !conn.writable_armed {
        let _ = registry.reregister(
            &mut conn.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        );
        conn.writable_armed = true;
    }
    true
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
