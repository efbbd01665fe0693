//! Codec cost per message: decode and encode of the messages the speaker actually exchanges.
//! `cargo bench -p nodeplane-bgp --bench codec`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ipnet::IpNet;
use nodeplane_bgp::packet::update::pack_updates;
use nodeplane_bgp::packet::{
    AsPath, Capability, Context, Message, MpReach, Open, Origin, PathAttributes,
};

fn messages() -> Vec<(&'static str, Message)> {
    let attrs = PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath::sequence(vec![4_200_000_001])),
        next_hop: Some(Ipv4Addr::new(10, 0, 0, 2)),
        communities: vec!["65000:100".parse().unwrap()],
        ..Default::default()
    };
    let one: Vec<IpNet> = vec!["10.244.1.0/24".parse().unwrap()];
    let many: Vec<IpNet> = (0..500u32)
        .map(|i| IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(0xc000_0000 | i), 32).unwrap()))
        .collect();
    let v6 = PathAttributes {
        next_hop: None,
        mp_reach: Some(MpReach {
            afi: 2,
            safi: 1,
            next_hop: vec![IpAddr::V6("fd00::2".parse().unwrap())],
            nlri: vec![],
        }),
        ..attrs.clone()
    };
    let ctx = Context::default();
    vec![
        ("keepalive", Message::Keepalive),
        (
            "open",
            Message::Open(Open {
                my_as: 23456,
                hold_time: 90,
                bgp_id: Ipv4Addr::new(10, 0, 0, 2),
                capabilities: vec![
                    Capability::Multiprotocol { afi: 1, safi: 1 },
                    Capability::Multiprotocol { afi: 2, safi: 1 },
                    Capability::RouteRefresh,
                    Capability::FourOctetAs(4_200_000_001),
                ],
            }),
        ),
        (
            "update_v4_1_prefix",
            Message::Update(pack_updates(&one, &attrs, &ctx).remove(0)),
        ),
        (
            "update_v6_1_prefix",
            Message::Update(
                pack_updates(&["fd00:244:1::/64".parse().unwrap()], &v6, &ctx).remove(0),
            ),
        ),
        (
            "update_v4_500_vips",
            Message::Update(pack_updates(&many, &attrs, &ctx).remove(0)),
        ),
    ]
}

fn bench(c: &mut Criterion) {
    let ctx = Context::default();
    let mut g = c.benchmark_group("bgp_codec");
    g.throughput(Throughput::Elements(1));
    for (name, msg) in messages() {
        let bytes = msg.to_bytes(&ctx).unwrap();
        g.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| Message::decode(black_box(&bytes), &ctx).unwrap())
        });
        let mut out = Vec::with_capacity(4096);
        g.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| {
                out.clear();
                black_box(&msg).encode(&ctx, &mut out).unwrap();
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
