//! Compiles the XDP program (`bpf/redirect.c`) with clang into `$OUT_DIR/redirect.bpf.o`, which
//! `src/loader.rs` embeds. Needs clang (any version with `-target bpf`) and the kernel UAPI
//! headers (Debian: clang, linux-libc-dev). `NP_CLANG` overrides the compiler.

use std::{env, path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let obj = out.join("redirect.bpf.o");
    let clang = env::var("NP_CLANG").unwrap_or_else(|_| "clang".to_owned());
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    // Debian keeps <asm/types.h> under the multiarch directory, which `-target bpf` does not
    // search by itself.
    let multiarch = format!("/usr/include/{arch}-linux-gnu");

    println!("cargo:rerun-if-changed=bpf/redirect.c");
    println!("cargo:rerun-if-changed=bpf/np_bpf.h");
    println!("cargo:rerun-if-env-changed=NP_CLANG");

    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Wextra", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", "bpf/redirect.c", "-o"])
        .arg(&obj)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile bpf/redirect.c ({s})"),
        Err(e) => panic!("cannot run {clang} to compile bpf/redirect.c: {e} (apt install clang)"),
    }
}
