//! Establish time and announce-to-visible latency against BIRD, our speaker side by side with
//! GoBGP (Debian's gobgpd) in the same run. Not a test: prints figures. Run explicitly:
//!
//! `cargo test -p nodeplane-bgp --release --test bench_interop -- --ignored --nocapture`

mod lab;

use std::process::Command;
use std::time::{Duration, Instant};

use lab::{bird_bgp, wait_until, Lab};

const ROUNDS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
#[ignore = "benchmark: run explicitly with --ignored --nocapture"]
fn bench_establish_and_announce_vs_gobgp() {
    let mut ours = (Vec::new(), Vec::new());
    let mut gobgp = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        // Ours.
        let mut lab = Lab::new("bno", 1);
        let bird = lab.bird(
            0,
            &bird_bgp("node", "10.0.0.1", 65000, "10.0.0.2", 65001, ""),
        );
        let t0 = Instant::now();
        lab.speaker(
            "local_as: 65001\nrouter_id: 10.0.0.2\nneighbors:\n  - address: 10.0.0.1\n    remote_as: 65000\n    families: [ipv4]\n    connect_retry_secs: 1\n",
            "node:\n  pod_cidrs: [10.244.1.0/24]\n",
        );
        wait_until("ours established", Duration::from_secs(10), || {
            bird.established("node")
        });
        ours.0.push(t0.elapsed());
        wait_until("initial route", Duration::from_secs(3), || {
            bird.route("10.244.1.0/24").is_some()
        });
        let p = format!("10.244.{}.0/24", 100 + round);
        let t1 = Instant::now();
        lab.write(
            "state.yaml",
            &format!("node:\n  pod_cidrs: [10.244.1.0/24, {p}]\n"),
        );
        wait_until("ours announce", Duration::from_secs(3), || {
            bird.route(&p).is_some()
        });
        ours.1.push(t1.elapsed());
        drop(lab);

        // GoBGP.
        let mut lab = Lab::new("bng", 1);
        let bird = lab.bird(
            0,
            &bird_bgp("node", "10.0.0.1", 65000, "10.0.0.2", 65001, ""),
        );
        let conf = lab.write(
            "gobgp.toml",
            "[global.config]\n  as = 65001\n  router-id = \"10.0.0.2\"\n\
             [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"10.0.0.1\"\n    peer-as = 65000\n\
             \x20 [neighbors.timers.config]\n    connect-retry = 1\n\
             \x20 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n",
        );
        let t0 = Instant::now();
        lab.spawn_in_node(&[
            "gobgpd",
            "-f",
            conf.to_str().unwrap(),
            "--api-hosts",
            "127.0.0.1:50051",
            "--pprof-disable",
        ]);
        wait_until("gobgp established", Duration::from_secs(10), || {
            bird.established("node")
        });
        gobgp.0.push(t0.elapsed());
        let p = format!("10.244.{}.0/24", 100 + round);
        let t1 = Instant::now();
        let st = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.node_ns,
                "gobgp",
                "-u",
                "127.0.0.1",
                "-p",
                "50051",
                "global",
                "rib",
                "add",
                &p,
            ])
            .status()
            .expect("gobgp cli");
        assert!(st.success());
        wait_until("gobgp announce", Duration::from_secs(3), || {
            bird.route(&p).is_some()
        });
        gobgp.1.push(t1.elapsed());
    }
    println!("\nBGP against BIRD 2.0.12, {ROUNDS} rounds, medians (min..max):");
    for (name, (est, ann)) in [("nodeplane", &ours), ("gobgpd 3.10", &gobgp)] {
        let lo = |v: &Vec<Duration>| ms(*v.iter().min().unwrap());
        let hi = |v: &Vec<Duration>| ms(*v.iter().max().unwrap());
        println!(
            "  {name:<12} establish {:7.1} ms ({:.1}..{:.1})   announce-to-visible {:6.1} ms ({:.1}..{:.1})",
            ms(median(est.clone())), lo(est), hi(est),
            ms(median(ann.clone())), lo(ann), hi(ann),
        );
    }
    let r_est = median(ours.0.clone()).as_secs_f64() / median(gobgp.0.clone()).as_secs_f64();
    let r_ann = median(ours.1.clone()).as_secs_f64() / median(gobgp.1.clone()).as_secs_f64();
    println!("  ratio nodeplane/gobgp: establish {r_est:.2}x, announce {r_ann:.2}x");
}
