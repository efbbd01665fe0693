//! What every control-socket subcommand shares: `--socket`, `--json`, the call, and aligned
//! tables like `bpftool`'s and `cilium`'s.

use std::path::PathBuf;

use serde::de::DeserializeOwned;

use nodeplane_control::api::client::call;
use nodeplane_control::api::{Request, DEFAULT_SOCKET};

#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Calls the daemon; with `--json` prints the raw result and returns `None`, else returns the
/// typed result for the human rendering.
pub fn ask<T: DeserializeOwned>(
    c: &Common,
    req: &Request,
) -> Result<Option<T>, Box<dyn std::error::Error>> {
    let v = call(&c.socket, req)?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(None);
    }
    Ok(Some(serde_json::from_value(v)?))
}

/// Renders rows as left-aligned columns separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    out
}

pub fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|x| x.to_string())
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let t = table(
            &["NAME", "IP"],
            &[
                vec!["web".into(), "10.0.0.1".into()],
                vec!["a-long-name".into(), "x".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME         IP\nweb          10.0.0.1\na-long-name  x\n"
        );
    }
}
