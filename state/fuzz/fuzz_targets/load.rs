//! `cd state && cargo +nightly fuzz run load fuzz/corpus/load fuzz/seeds/load`: YAML texts into
//! the state loader (`load_sources`: parse each file, merge, validate whole), as a directory of
//! files would be loaded. The input is split into files at each `\n---8<---\n` line (at most
//! 8, named `f0.yaml`...).
//!
//! Checked: nothing panics; a rejection names the file of every YAML error, and every
//! validation problem has a field path under a known top-level key and a reason, with the
//! file it came from wherever the problem is an item's (`services[web]...`); a state that loads
//! validates again, survives `to_yaml_string` → `from_yaml_str` unchanged, and compiles into
//! the dataplane's tables (what the daemon does next) without panicking.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use nodeplane_dataplane::{MaglevCache, Tables};
use nodeplane_state::{load_sources, validate, LoadError, State};

const CUT: &str = "\n---8<---\n";
const MAX_FILES: usize = 8;
/// Lists whose items always come from a file: a problem on one names that file.
const ITEM_SECTIONS: [&str; 5] = [
    "interfaces[",
    "endpoints[",
    "ipcache[",
    "services[",
    "policies[",
];
/// Every top-level key a problem's field path may start with.
const KEYS: [&str; 7] = [
    "node",
    "conntrack",
    "interfaces",
    "endpoints",
    "ipcache",
    "services",
    "policies",
];

fn check_error(e: &LoadError, names: &[PathBuf], top: bool) {
    match e {
        LoadError::Yaml { path, .. } => {
            assert!(names.contains(path), "YAML error on an unknown file: {e}");
            assert!(e.to_string().starts_with(&*path.to_string_lossy()), "{e}");
        }
        LoadError::Invalid(v) => {
            assert!(!v.problems.is_empty(), "a rejection without a problem");
            for p in &v.problems {
                assert!(!p.reason.is_empty(), "no reason: {p:?}");
                assert!(
                    KEYS.iter().any(|k| p.field.starts_with(k)),
                    "field {:?} is under no known key: {p:?}",
                    p.field
                );
                if let Some(f) = &p.file {
                    assert!(names.contains(f), "problem names an unknown file: {p:?}");
                }
                if ITEM_SECTIONS.iter().any(|s| p.field.starts_with(s)) {
                    assert!(p.file.is_some(), "an item's problem names no file: {p:?}");
                }
            }
        }
        LoadError::Several(all) if top => {
            assert!(all.len() > 1, "Several with {} error", all.len());
            for e in all {
                assert!(!matches!(e, LoadError::Invalid(_)), "{e}");
                check_error(e, names, false);
            }
        }
        e => panic!("load_sources cannot fail this way: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let files: Vec<&str> = text.split(CUT).take(MAX_FILES).collect();
    let names: Vec<PathBuf> = (0..files.len())
        .map(|i| PathBuf::from(format!("f{i}.yaml")))
        .collect();
    match load_sources(names.iter().cloned().zip(files.iter().copied())) {
        Err(e) => check_error(&e, &names, true),
        Ok(state) => {
            validate(&state).unwrap_or_else(|e| panic!("loaded, then invalid: {e}"));
            let yaml = state.to_yaml_string().expect("a loaded state serialises");
            let back = State::from_yaml_str(&yaml)
                .unwrap_or_else(|e| panic!("its own YAML does not load: {e}\n{yaml}"));
            assert_eq!(back, state, "YAML round trip changed the state:\n{yaml}");
            let _ = Tables::build(&state, 1, &mut MaglevCache::default());
        }
    }
});
