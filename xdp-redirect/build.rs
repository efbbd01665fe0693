//! Compiles the XDP program (`bpf/redirect.c`) and the TC fast path (`bpf/fastpath.c`) with clang
//! into `$OUT_DIR/redirect.bpf.o` and `$OUT_DIR/fastpath.bpf.o`, which `src/loader.rs` and
//! `src/fastpath.rs` embed. Needs clang (any version with `-target bpf`) and the kernel UAPI
//! headers (Debian: clang, linux-libc-dev). `NP_CLANG` overrides the compiler.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = env::var("NP_CLANG").unwrap_or_else(|_| "clang".to_owned());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    // Debian keeps <asm/types.h> under the multiarch directory, which `-target bpf` does not
    // search by itself.
    let multiarch = format!("/usr/include/{arch}-linux-gnu");

    for h in ["np_bpf.h", "np_parse.h", "np_flows.h"] {
        println!("cargo:rerun-if-changed=bpf/{h}");
    }
    println!("cargo:rerun-if-env-changed=NP_CLANG");

    for prog in ["redirect", "fastpath"] {
        let src = format!("bpf/{prog}.c");
        println!("cargo:rerun-if-changed={src}");
        let status = Command::new(&clang)
            .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Wextra", "-Werror"])
            .arg(format!("-I{multiarch}"))
            .args(["-c", &src, "-o"])
            .arg(out.join(format!("{prog}.bpf.o")))
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{clang} failed to compile {src} ({s})"),
            Err(e) => panic!("cannot run {clang} to compile {src}: {e} (apt install clang)"),
        }
    }
}
