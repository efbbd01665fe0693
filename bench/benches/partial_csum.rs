//! Cost of completing a partial (CHECKSUM_PARTIAL) TCP checksum: the L4 byte sum alone, and
//! the whole completion of a 1514-byte frame (1460 bytes of payload) as the pipeline's stage 1
//! runs it. Per frame (criterion's elements are frames).
//!
//! Run: `cargo bench -p nodeplane-bench --bench partial_csum`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::PacketBuilder;
use nodeplane_dataplane::csum;
use nodeplane_dataplane::parse::{parse, Parsed};
use nodeplane_dataplane::partial;

fn frame(payload: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..payload).map(|i| (i * 7 + 1) as u8).collect();
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 2, 0x0a], [2, 0, 0, 0, 1, 1])
        .ipv4([10, 244, 1, 10], [10, 244, 1, 21], 64)
        .tcp(40000, 8080, 1, 65535)
        .ack(1)
        .write(&mut f, &data)
        .expect("frame");
    f
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("partial_csum");
    g.throughput(Throughput::Elements(1));
    for payload in [0usize, 1460] {
        let mut f = frame(payload);
        let Ok(Parsed::Ip(m)) = parse(&f) else {
            panic!("not ip")
        };
        let (l4, end) = (usize::from(m.l4_off), usize::from(m.ip_end));
        let field = l4 + 16;
        let p = csum::fold64(csum::pseudo_header(
            &m.src.bytes,
            &m.dst.bytes,
            false,
            m.proto,
            end - l4,
        ));
        g.bench_function(format!("sum_folded/{}", end - l4), |b| {
            b.iter(|| csum::sum_folded(black_box(&f[l4..end])))
        });
        csum::put16(&mut f, field, p);
        let Ok(Parsed::Ip(m)) = parse(&f) else {
            panic!("not ip")
        };
        assert!(m.csum_partial);
        g.bench_function(format!("complete/tcp4_payload_{payload}"), |b| {
            b.iter(|| {
                // Back to partial (2 bytes), then complete: the pipeline's stage-1 work.
                csum::put16(&mut f, field, p);
                assert!(partial::complete(black_box(&mut f), black_box(&m)));
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
