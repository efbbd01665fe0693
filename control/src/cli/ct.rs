//! `nodeplane ct list [filters] [--count]`, `nodeplane ct flush [filters]` and `nodeplane ct save`.

use std::net::IpAddr;
use std::process::ExitCode;

use nodeplane_control::api::{CtFlushed, CtList, CtSaved, Request};
use nodeplane_dataplane::worker::CtFilter;

use super::client::{ask, table, Common};
use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct CtArgs {
    #[command(subcommand)]
    cmd: CtCmd,
}

#[derive(Debug, Clone, clap::Args)]
struct Filter {
    /// Original source address.
    #[arg(long)]
    src: Option<IpAddr>,
    /// Original destination (VIP) or backend address.
    #[arg(long)]
    dst: Option<IpAddr>,
    /// Any port of the flow (source, destination, backend).
    #[arg(long)]
    port: Option<u16>,
    /// tcp, udp or icmp.
    #[arg(long, value_parser = ["tcp", "udp", "icmp"])]
    proto: Option<String>,
    /// Flow state: OPEN, SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE, TIME_WAIT.
    #[arg(long)]
    state: Option<String>,
}

impl Filter {
    fn into_filter(self) -> CtFilter {
        CtFilter {
            src: self.src,
            dst: self.dst,
            port: self.port,
            proto: self.proto,
            state: self.state,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
enum CtCmd {
    /// Conntrack entries of every worker.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Only count the matching entries.
        #[arg(long)]
        count: bool,
        /// Rows to show at most.
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// Removes entries (all, or those matching the filters) from every worker.
    Flush {
        #[command(flatten)]
        filter: Filter,
        #[command(flatten)]
        common: Common,
    },
    /// Writes every worker's flows to the conntrack snapshot now (the daemon also does at
    /// every stop; the next start restores them).
    Save {
        #[command(flatten)]
        common: Common,
    },
}

fn ms(v: u64) -> String {
    if v >= 10_000 {
        format!("{}s", v / 1000)
    } else {
        format!("{v}ms")
    }
}

pub fn run(args: CtArgs) -> CliResult {
    match args.cmd {
        CtCmd::List {
            filter,
            count,
            limit,
            common,
        } => {
            let req = Request::CtList {
                filter: filter.into_filter(),
                limit,
                count_only: count,
            };
            let Some(l) = ask::<CtList>(&common, &req)? else {
                return Ok(ExitCode::SUCCESS);
            };
            if count {
                println!("{}", l.matched);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = l
                .rows
                .iter()
                .map(|r| {
                    vec![
                        r.proto.clone(),
                        format!("{}:{}", r.src, r.sport),
                        format!("{}:{}", r.dst, r.dport),
                        match (&r.backend, r.backend_port) {
                            (Some(b), Some(p)) => {
                                format!("{b}:{p} ({})", r.service.clone().unwrap_or_default())
                            }
                            _ => "-".into(),
                        },
                        r.snat.clone().unwrap_or_else(|| "-".into()),
                        r.state.clone(),
                        format!("{}>{}", r.src_identity, r.dst_identity),
                        r.policy.clone(),
                        format!("{}/{}", r.packets[0], r.packets[1]),
                        ms(r.expires_in_ms),
                        r.worker.to_string(),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "PROTO",
                        "SOURCE",
                        "DESTINATION",
                        "DNAT",
                        "SNAT",
                        "STATE",
                        "IDENTITIES",
                        "POLICY",
                        "PKTS(o/r)",
                        "EXPIRES",
                        "WORKER"
                    ],
                    &rows
                )
            );
            if l.truncated {
                println!(
                    "({} of {} matching entries shown; use --limit)",
                    l.rows.len(),
                    l.matched
                );
            } else {
                println!("{} entries", l.matched);
            }
        }
        CtCmd::Flush { filter, common } => {
            let req = Request::CtFlush {
                filter: filter.into_filter(),
            };
            if let Some(f) = ask::<CtFlushed>(&common, &req)? {
                println!("flushed {} entries", f.flushed);
            }
        }
        CtCmd::Save { common } => {
            if let Some(s) = ask::<CtSaved>(&common, &Request::CtSave {})? {
                println!(
                    "saved {} flows and {} affinity entries to {} ({} bytes, {:.1} ms)",
                    s.flows, s.affinity, s.path, s.bytes, s.ms
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
