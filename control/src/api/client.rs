//! The blocking client of the control socket (used by the CLI and the tests).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the nodeplane control socket {path}: {source} (is `nodeplane run` running, and are you root?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: malformed response: {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error("{0}")]
    Refused(String),
}

/// Sends one request and returns its result (or the daemon's error as [`ClientError::Refused`]).
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value, ClientError> {
    let line = serde_json::to_string(req).map_err(|e| ClientError::Malformed {
        path: socket.to_path_buf(),
        detail: e.to_string(),
    })?;
    let resp = call_raw(socket, &line)?;
    if resp.ok {
        Ok(resp.result.unwrap_or(serde_json::Value::Null))
    } else {
        Err(ClientError::Refused(
            resp.error
                .unwrap_or_else(|| "error without a message".into()),
        ))
    }
}

/// Sends one raw line (no newline) and parses the response line.
pub fn call_raw(socket: &Path, line: &str) -> Result<Response, ClientError> {
    let io = |source| ClientError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    s.write_all(line.as_bytes()).map_err(io)?;
    s.write_all(b"\n").map_err(io)?;
    let mut r = BufReader::new(s);
    let mut out = String::new();
    r.read_line(&mut out).map_err(io)?;
    serde_json::from_str(&out).map_err(|e| ClientError::Malformed {
        path: socket.to_path_buf(),
        detail: format!("{e}: {:?}", out.chars().take(200).collect::<String>()),
    })
}
