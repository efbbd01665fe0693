//! Loading files and directories: every error names the file, bad input rejects the whole load.

use std::fs;
use std::path::{Path, PathBuf};

use nodeplane_state::*;
use tempfile::TempDir;

fn example_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/state"))
}

/// A temporary copy of the example directory.
fn example_copy() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in example::FILES {
        fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn invalid(e: LoadError) -> ValidationError {
    match e {
        LoadError::Invalid(v) => v,
        other => panic!("expected a validation error, got: {other}"),
    }
}

fn problem<'a>(v: &'a ValidationError, field: &str) -> &'a Problem {
    v.problems
        .iter()
        .find(|p| p.field == field)
        .unwrap_or_else(|| panic!("no problem at {field} in:\n{v}"))
}

#[test]
fn one_file_holding_the_whole_example() {
    // The example's files use distinct top-level keys, so their concatenation is one document.
    let dir = tempfile::tempdir().unwrap();
    let all: String = example::FILES.iter().map(|(_, t)| *t).collect();
    let f = dir.path().join("node-1.yaml");
    fs::write(&f, all).unwrap();
    assert_eq!(load_file(&f).unwrap(), example::state().unwrap());
    assert_eq!(load_path(&f).unwrap(), example::state().unwrap());
}

#[test]
fn a_directory_with_one_bad_file_is_rejected_whole_naming_that_file() {
    let dir = example_copy();
    let services = dir.path().join("services.yaml");
    let text = fs::read_to_string(&services).unwrap().replacen(
        "port: 5353 }   # web-2",
        "port: 0 }   # web-2",
        1,
    );
    fs::write(&services, text).unwrap();
    let v = invalid(load_dir(dir.path()).unwrap_err());
    assert_eq!(v.problems.len(), 1, "{v}");
    let p = problem(&v, "services[dns].backends[1].port");
    assert_eq!(p.file.as_deref(), Some(services.as_path()));
    assert!(p.reason.contains("port 0"), "{v}");
    assert!(v.to_string().contains(&format!(
        "{}: services[dns].backends[1].port: port 0",
        services.display()
    )));
}

#[test]
fn items_keep_their_file_through_the_merge() {
    let dir = example_copy();
    // A second services file, merged after services.yaml: its second service is unnamed and
    // has a zero weight, its first one takes a name services.yaml already uses.
    let extra = dir.path().join("tenant-services.yaml");
    fs::write(
        &extra,
        "services:\n\
         - name: web\n  type: ClusterIP\n  frontends: [{ip: 10.96.0.99, port: 80}]\n\
         - name: \"\"\n  type: ClusterIP\n  frontends: [{ip: 10.96.0.98, port: 80}]\n  \
           backends: [{ip: 10.244.1.21, port: 80, weight: 0}]\n",
    )
    .unwrap();
    // A policy file that refers to a missing endpoint.
    let pols = dir.path().join("zz-policies.yaml");
    fs::write(&pols, "policies:\n  - endpoint: ghost\n").unwrap();

    let v = invalid(load_dir(dir.path()).unwrap_err());
    let services = dir.path().join("services.yaml");

    let dup = problem(&v, "services[web].name");
    assert_eq!(dup.file.as_deref(), Some(extra.as_path()));
    assert!(
        dup.reason
            .contains(&format!("also services[web] in {}", services.display())),
        "{v}"
    );
    // Unnamed: named by its index in its own file (1), not in the merged list (5).
    let unnamed = problem(&v, "services[1].name");
    assert_eq!(unnamed.file.as_deref(), Some(extra.as_path()));
    let weight = problem(&v, "services[1].backends[0].weight");
    assert_eq!(weight.file.as_deref(), Some(extra.as_path()));
    let ghost = problem(&v, "policies[ghost].endpoint");
    assert_eq!(ghost.file.as_deref(), Some(pols.as_path()));
    assert_eq!(v.problems.len(), 4, "{v}");
}

#[test]
fn node_and_conntrack_may_be_set_by_one_file_only() {
    let dir = example_copy();
    let second = dir.path().join("z-node.yaml");
    fs::write(
        &second,
        "node:\n  name: node-2\nconntrack:\n  max_entries: 2048\n",
    )
    .unwrap();
    let ct = dir.path().join("a-conntrack.yaml");
    fs::write(&ct, "conntrack:\n  max_entries: 4096\n").unwrap();
    let v = invalid(load_dir(dir.path()).unwrap_err());
    let node = problem(&v, "node");
    assert_eq!(node.file.as_deref(), Some(second.as_path()));
    assert!(node
        .reason
        .contains(&dir.path().join("node.yaml").display().to_string()));
    let c = problem(&v, "conntrack");
    assert_eq!(c.file.as_deref(), Some(second.as_path()));
    assert!(c.reason.contains(&ct.display().to_string()), "{v}");

    // Alone, a conntrack file merges in and is checked against its own file.
    fs::remove_file(&second).unwrap();
    assert_eq!(load_dir(dir.path()).unwrap().conntrack.max_entries, 4096);
    fs::write(&ct, "conntrack:\n  max_entries: 10\n").unwrap();
    let v = invalid(load_dir(dir.path()).unwrap_err());
    assert_eq!(
        problem(&v, "conntrack.max_entries").file.as_deref(),
        Some(ct.as_path())
    );
    // And node problems name node.yaml.
    fs::write(&ct, "").unwrap();
    let node_yaml = dir.path().join("node.yaml");
    let text = fs::read_to_string(&node_yaml)
        .unwrap()
        .replace("maglev_table_size: 16381", "maglev_table_size: 16384");
    fs::write(&node_yaml, text).unwrap();
    let v = invalid(load_dir(dir.path()).unwrap_err());
    assert_eq!(
        problem(&v, "node.maglev_table_size").file.as_deref(),
        Some(node_yaml.as_path())
    );
}

#[test]
fn yaml_syntax_error_names_the_file_and_line() {
    let dir = example_copy();
    let bad = dir.path().join("ipcache.yaml");
    fs::write(
        &bad,
        "ipcache:\n  - prefix: 10.244.2.0/24\n    identity: 2001\n  - prefix: 10.0.0.0/8\n   identity: 3000\n",
    )
    .unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    match &err {
        LoadError::Yaml { path, .. } => assert_eq!(path, &bad),
        other => panic!("expected a YAML error, got {other}"),
    }
    let (line, _) = err.yaml_location().expect("a location");
    assert_eq!(line, 5, "{err}");
    let text = err.to_string();
    assert!(text.starts_with(&bad.display().to_string()), "{text}");
    assert!(text.contains("line 5"), "{text}");
}

#[test]
fn unknown_fields_are_rejected_with_their_place() {
    let dir = example_copy();
    let bad = dir.path().join("endpoints.yaml");
    let text = fs::read_to_string(&bad).unwrap().replace(
        "    identity: 1002\n    labels:\n      app: web\n  - name: web-2",
        "    identity: 1002\n    lables:\n      app: web\n  - name: web-2",
    );
    fs::write(&bad, text).unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("endpoints[1]: unknown field `lables`"),
        "{msg}"
    );
    assert!(msg.starts_with(&bad.display().to_string()), "{msg}");
    assert_eq!(err.yaml_location().map(|l| l.0), Some(15), "{msg}");

    // A top-level typo too.
    fs::write(&bad, "endpoint:\n  - name: x\n").unwrap();
    let msg = load_dir(dir.path()).unwrap_err().to_string();
    assert!(msg.contains("unknown field `endpoint`"), "{msg}");
}

#[test]
fn every_unparsable_file_is_reported() {
    let dir = example_copy();
    let a = dir.path().join("interfaces.yaml");
    let b = dir.path().join("services.yaml");
    fs::write(&a, "interfaces: {\n").unwrap();
    fs::write(&b, "services:\n  - name: x\n    type: Nodeport\n").unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    let LoadError::Several(errors) = &err else {
        panic!("expected several errors, got {err}");
    };
    let paths: Vec<&PathBuf> = errors
        .iter()
        .map(|e| match e {
            LoadError::Yaml { path, .. } => path,
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(paths, [&a, &b]);
    let text = err.to_string();
    assert!(text.starts_with("2 files could not be loaded:"), "{text}");
    assert!(text.contains("unknown variant `Nodeport`"), "{text}");
}

#[test]
fn what_a_directory_load_reads() {
    let dir = example_copy();
    // Not YAML, or hidden: ignored (a YAML name that is a directory is an error: see
    // `a_state_file_that_is_not_a_regular_file_rejects_the_load`). `.yml` counts.
    // Comment-only files are empty.
    fs::write(dir.path().join("README.md"), "not: [yaml").unwrap();
    fs::write(dir.path().join(".swap.yaml"), "not: [yaml").unwrap();
    fs::create_dir(dir.path().join("old.d")).unwrap();
    fs::write(dir.path().join("notes.yaml"), "# nothing here yet\n").unwrap();
    fs::write(
        dir.path().join("more.yml"),
        "ipcache:\n  - prefix: 172.16.0.0/12\n    identity: 3001\n",
    )
    .unwrap();
    let s = load_dir(dir.path()).unwrap();
    assert_eq!(s.ipcache.len(), 3);
    // Sorted by file name: ipcache.yaml before more.yml.
    assert_eq!(s.ipcache[2].identity, 3001);

    let empty = tempfile::tempdir().unwrap();
    fs::write(empty.path().join("state.txt"), "{}").unwrap();
    let err = load_dir(empty.path()).unwrap_err();
    assert!(matches!(err, LoadError::NoFiles { .. }), "{err}");
    assert!(err.to_string().contains("no *.yaml, *.yml or *.json files"));

    let missing = empty.path().join("nope");
    let err = load_path(&missing).unwrap_err();
    assert!(matches!(err, LoadError::Io { .. }), "{err}");
    assert!(err.to_string().contains(&missing.display().to_string()));
}

#[test]
fn loading_twice_gives_the_same_state_and_sources_load_like_files() {
    let a = load_dir(example_dir()).unwrap();
    let b = load_dir(example_dir()).unwrap();
    assert_eq!(a, b);
    let sources: Vec<(PathBuf, String)> = example::FILES
        .iter()
        .map(|(n, t)| (PathBuf::from(n), t.to_string()))
        .collect();
    assert_eq!(load_sources(sources).unwrap(), a);
}

/// Puts something in place of a state file.
type Make = dyn Fn(&Path);

/// Issue 13 item 6: a state file name that is not a readable regular file rejects the whole
/// load, naming the file and what it is (before: it was skipped and the state published
/// without it). Each kind replaces `services.yaml` of the example.
#[test]
fn a_state_file_that_is_not_a_regular_file_rejects_the_load() {
    let replace = |dir: &Path, make: &dyn Fn(&Path)| {
        let f = dir.join("services.yaml");
        fs::remove_file(&f).unwrap();
        make(&f);
        f
    };
    let kinds: [(&str, &Make); 5] = [
        ("a dangling symlink (to ", &|f| {
            std::os::unix::fs::symlink("gone.yaml", f).unwrap()
        }),
        ("a symlink loop", &|f| {
            let other = f.with_file_name("loop.other");
            std::os::unix::fs::symlink(&other, f).unwrap();
            std::os::unix::fs::symlink(f, &other).unwrap();
        }),
        ("a directory", &|f| fs::create_dir(f).unwrap()),
        ("a directory", &|f| {
            let d = f.with_file_name("elsewhere");
            fs::create_dir(&d).unwrap();
            std::os::unix::fs::symlink(&d, f).unwrap();
        }),
        ("a FIFO", &|f| {
            let ok = std::process::Command::new("mkfifo")
                .arg(f)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mkfifo");
        }),
    ];
    for (what, make) in kinds {
        let dir = example_copy();
        let f = replace(dir.path(), make);
        let err = load_dir(dir.path()).expect_err(what);
        let text = err.to_string();
        assert!(
            matches!(&err, LoadError::NotAFile { path, .. } if *path == f),
            "{what}: {text}"
        );
        assert!(text.contains(&f.display().to_string()), "{text}");
        assert!(text.contains(what), "{what}: {text}");
    }
}

/// Issue 13 item 9: limits checked before anything is parsed, each error naming the file (or
/// directory) and the limit.
#[test]
fn state_inputs_are_bounded_before_parsing() {
    let dir = example_copy();
    let tight = |file: u64, total: u64, files: usize| Limits {
        max_file_bytes: file,
        max_total_bytes: total,
        max_files: files,
    };
    let sizes: Vec<u64> = example::FILES.iter().map(|(_, t)| t.len() as u64).collect();
    let (largest, sum) = (*sizes.iter().max().unwrap(), sizes.iter().sum::<u64>());
    // Exactly at every limit: loads.
    load_dir_limited(dir.path(), &tight(largest, sum, sizes.len())).unwrap();

    let err = load_dir_limited(dir.path(), &tight(largest - 1, sum, sizes.len())).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::FileTooLarge { .. }), "{text}");
    assert!(
        text.contains(&format!("limit of {} bytes", largest - 1)),
        "{text}"
    );
    assert!(text.contains("state.limits.max_file_bytes"), "{text}");

    let err = load_dir_limited(dir.path(), &tight(largest, sum - 1, sizes.len())).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::TotalTooLarge { .. }), "{text}");
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(text.contains("state.limits.max_total_bytes"), "{text}");

    let err = load_dir_limited(dir.path(), &tight(largest, sum, sizes.len() - 1)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, LoadError::TooManyFiles { .. }), "{text}");
    assert!(text.contains("state.limits.max_files"), "{text}");

    // One file alone, too.
    let one = dir.path().join("services.yaml");
    let n = fs::metadata(&one).unwrap().len();
    assert!(matches!(
        load_file_limited(&one, &tight(n - 1, u64::MAX, 1)),
        Err(LoadError::FileTooLarge { size, .. }) if size == n
    ));

    // The default limits (32 MiB a file): a 50 MB file (sparse: nothing to read) is refused
    // from its size alone, before a byte is read or parsed.
    let big = dir.path().join("zz-big.yaml");
    fs::File::create(&big).unwrap().set_len(50_000_000).unwrap();
    let err = load_dir(dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, LoadError::FileTooLarge { path, size: 50_000_000, limit } if *path == big && *limit == Limits::DEFAULT_MAX_FILE_BYTES),
        "{text}"
    );
}

#[test]
fn json_state_files_load_like_yaml_ones() {
    // The example node written as JSON (the bulk format) loads to the same state, and a JSON
    // mistake names its file, line and column.
    let yaml = nodeplane_state::example::state().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json = serde_json::to_string_pretty(&yaml).unwrap();
    std::fs::write(dir.path().join("node.json"), &json).unwrap();
    let loaded = nodeplane_state::load_dir(dir.path()).unwrap();
    assert_eq!(loaded, yaml);

    let bad = json.replacen("\"services\"", "\"services\" 1", 1);
    std::fs::write(dir.path().join("node.json"), bad).unwrap();
    let e = nodeplane_state::load_dir(dir.path()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("node.json"), "{msg}");
    assert!(e.yaml_location().is_some(), "{msg}");
}

#[test]
fn a_yaml_syntax_error_is_reported_as_such_not_as_a_type_error() {
    let dir = tempfile::tempdir().unwrap();
    // A badly indented line: the syntax error is on line 3.
    std::fs::write(
        dir.path().join("a.yaml"),
        "services:\n  - name: a\n   type: ClusterIP\n",
    )
    .unwrap();
    let e = nodeplane_state::load_dir(dir.path()).unwrap_err();
    let (line, _) = e.yaml_location().expect("a location");
    assert_eq!(line, 3, "{e}");
}
