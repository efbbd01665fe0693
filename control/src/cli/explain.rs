//! `nodeplane explain --iface IF --proto P --src IP[:PORT] --dst IP[:PORT]`.

use std::process::ExitCode;

use nodeplane_control::api::{ExplainRequest, Explanation, Request, RuleDecision};

use super::client::{ask, Common};
use super::policy::rule_text;
use super::CliResult;

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Ingress interface.
    #[arg(long)]
    iface: String,
    /// tcp, udp or icmp.
    #[arg(long, value_parser = ["tcp", "udp", "icmp"])]
    proto: String,
    /// Source IP[:PORT] ([IPv6]:PORT); for icmp the port is the echo identifier.
    #[arg(long)]
    src: String,
    /// Destination IP[:PORT].
    #[arg(long)]
    dst: String,
    /// TCP flags of the packet: syn (a new connection) or ack (a packet of an established one).
    #[arg(long, value_parser = ["syn", "ack"])]
    tcp_flags: Option<String>,
    #[command(flatten)]
    common: Common,
}

fn rule(r: &Option<RuleDecision>) -> String {
    match r {
        None => "no rules (allowed)".into(),
        Some(d) => match (&d.rule_index, &d.rule) {
            (Some(i), Some(r)) => {
                let (a, peers, proto, ports) = rule_text(r);
                format!(
                    "{} {} rule {i}: {a} peers={peers} proto={proto} ports={ports} -> {}",
                    d.endpoint, d.direction, d.decision
                )
            }
            _ => format!(
                "{} {}: no rule matches -> default deny",
                d.endpoint, d.direction
            ),
        },
    }
}

pub fn run(args: ExplainArgs) -> CliResult {
    let req = Request::Explain(ExplainRequest {
        iface: args.iface,
        proto: args.proto,
        src: args.src,
        dst: args.dst,
        tcp_flags: args.tcp_flags,
    });
    let Some(x) = ask::<Explanation>(&args.common, &req)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let o = &x.outcome;
    println!(
        "packet:      {} in on {} ({})",
        x.packet, x.iface, x.iface_role
    );
    println!("steering:    {}", x.steering);
    match &x.flow {
        Some(f) => println!(
            "conntrack:   existing flow on worker {}: {} {}:{} -> {}:{} {} (expires in {} ms)",
            f.worker, f.proto, f.src, f.sport, f.dst, f.dport, f.state, f.expires_in_ms
        ),
        None => println!(
            "conntrack:   no flow: {}",
            o.ct.as_deref()
                .map(|c| format!("would be {c}"))
                .unwrap_or_else(|| "not tracked".into())
        ),
    }
    match (&o.service, &o.backend, o.backend_port) {
        (Some(s), Some(b), Some(p)) => println!(
            "service:     {s} via {} -> backend {b}:{p} ({})",
            x.service_frontend.as_deref().unwrap_or("-"),
            x.backend_state.as_deref().unwrap_or("?")
        ),
        (Some(s), _, _) => println!("service:     {s} (no backend chosen)"),
        _ => println!("service:     none"),
    }
    let id = |i: &Option<nodeplane_control::api::IdentityInfo>| {
        i.as_ref()
            .map(|i| format!("{} ({})", i.identity, i.source))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "identities:  src {} -> dst {}",
        id(&x.src_identity),
        id(&x.dst_identity)
    );
    println!("policy:      mode {}; verdict {}", x.policy_mode, o.policy);
    if x.policy_mode != "allow-all" {
        println!("  egress:    {}", rule(&x.egress_rule));
        println!("  ingress:   {}", rule(&x.ingress_rule));
    }
    let verdict = match o.verdict.as_str() {
        "forward" => format!("forward on {}", o.egress.as_deref().unwrap_or("?")),
        "drop" => format!("drop ({})", o.reason.as_deref().unwrap_or("?")),
        "pass" => "pass to the kernel".into(),
        v => v.into(),
    };
    println!("verdict:     {verdict}");
    if let Some(out) = &x.output {
        println!("output:      {out}");
    }
    Ok(ExitCode::SUCCESS)
}
