//! Loading YAML (or JSON) from a file or a directory of files (merged), then validating the
//! result whole.
//!
//! A directory load reads every regular `*.yaml` / `*.yml` / `*.json` file directly in the
//! directory (not recursively; names starting with `.` are skipped, so Kubernetes ConfigMap
//! mounts with their `..data` links work), in byte order of the file names. JSON has the same
//! schema and is the bulk format: it parses ~20x faster than YAML (100k services). Lists are concatenated in that
//! order; `node` and `conntrack` may each be set by one file only. Every item remembers the
//! file (and its index in that file) it came from, so a problem found after the merge still
//! names the file an operator has to edit.
//!
//! Nothing is returned unless every file parsed and the merged state validated: a bad file
//! rejects the whole load. So does a state file name that is not a readable regular
//! file (a dangling symlink, a symlink loop, a directory, a FIFO, ...): skipping it would publish
//! a state without that file's items.
//!
//! Every load is bounded by [`Limits`] before a byte is parsed: the number of files, the size
//! of each file and of all of them together (from `fstat` of the opened file, and the read
//! itself stops one byte past the limit, so a file growing meanwhile is caught too).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{
    ConntrackSettings, Endpoint, ExternalWorkload, Interface, IpcacheEntry, Node, Policy, Service,
    State,
};
use crate::validate::{validate_with_origins, Origins, Problem, Section, ValidationError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read state from {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A YAML syntax or type error; the message carries the field path and the line and
    /// column (`services[1].port: invalid value: ... at line 3 column 11`).
    #[error("{path}: {source}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: yaml_serde::Error,
    },
    /// A JSON syntax or type error in a `*.json` state file, with its line and column.
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{dir}: no *.yaml, *.yml or *.json files in the directory")]
    NoFiles { dir: PathBuf },
    /// A state file name that is not a regular file (never skipped: the load is rejected).
    #[error("cannot read state from {path}: {what}, not a regular file")]
    NotAFile { path: PathBuf, what: String },
    #[error(
        "{path}: {size} bytes is over the limit of {limit} bytes per state file \
         (state.limits.max_file_bytes); not read"
    )]
    FileTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error(
        "{dir}: the state files add up to more than the limit of {limit} bytes \
         (state.limits.max_total_bytes; over it at {path}); not read"
    )]
    TotalTooLarge {
        dir: PathBuf,
        path: PathBuf,
        limit: u64,
    },
    #[error("{dir}: more than {limit} state files (state.limits.max_files); not read")]
    TooManyFiles { dir: PathBuf, limit: usize },
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// More than one file failed to read or parse (each error names its file).
    #[error("{}", display_several(.0))]
    Several(Vec<LoadError>),
}

fn display_several(errors: &[LoadError]) -> String {
    let mut s = format!("{} files could not be loaded:", errors.len());
    for e in errors {
        s.push_str("\n  ");
        s.push_str(&e.to_string());
    }
    s
}

impl LoadError {
    /// The (line, column) of a YAML or JSON error, both 1-based.
    pub fn yaml_location(&self) -> Option<(usize, usize)> {
        match self {
            LoadError::Yaml { source, .. } => source.location().map(|l| (l.line(), l.column())),
            LoadError::Json { source, .. } => Some((source.line(), source.column())),
            _ => None,
        }
    }
}

/// Bounds on what a load reads, checked before parsing (daemon config `state.limits`,
/// docs/config.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Bytes per state file (and per etcd value).
    pub max_file_bytes: u64,
    /// Bytes of all state files of a directory together (and of all etcd values).
    pub max_total_bytes: u64,
    /// `*.yaml` / `*.yml` files in a state directory.
    pub max_files: usize,
}

impl Limits {
    pub const DEFAULT_MAX_FILE_BYTES: u64 = 32 << 20;
    pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 64 << 20;
    pub const DEFAULT_MAX_FILES: usize = 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: Self::DEFAULT_MAX_FILE_BYTES,
            max_total_bytes: Self::DEFAULT_MAX_TOTAL_BYTES,
            max_files: Self::DEFAULT_MAX_FILES,
        }
    }
}

/// One file's contribution, before the merge. `node` and `conntrack` are options here so the
/// merge can tell "not in this file" from "set to the defaults".
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Part {
    #[serde(default)]
    node: Option<Node>,
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
    #[serde(default)]
    ipcache: Vec<IpcacheEntry>,
    #[serde(default)]
    services: Vec<Service>,
    #[serde(default)]
    policies: Vec<Policy>,
    #[serde(default)]
    external_workloads: Vec<ExternalWorkload>,
    #[serde(default)]
    conntrack: Option<ConntrackSettings>,
}

impl State {
    /// Parses and validates one YAML document.
    pub fn from_yaml_str(yaml: &str) -> Result<State, LoadError> {
        let part = parse(Path::new("<string>"), yaml)?;
        // One document cannot set `node` twice, so the merge finds no conflicts here; and a
        // string has no file to name, so problems carry only field paths.
        let (state, _, _) = merge(vec![(PathBuf::from("<string>"), part)]);
        validate_with_origins(&state, None)?;
        Ok(state)
    }

    /// The state as one YAML document, which [`State::from_yaml_str`] parses back to an equal
    /// `State`.
    pub fn to_yaml_string(&self) -> Result<String, yaml_serde::Error> {
        yaml_serde::to_string(self)
    }
}

/// Loads one YAML file and validates it, within the default [`Limits`].
pub fn load_file(path: &Path) -> Result<State, LoadError> {
    load_file_limited(path, &Limits::default())
}

/// [`load_file`] within `limits` (the file's size against `max_file_bytes`).
pub fn load_file_limited(path: &Path, limits: &Limits) -> Result<State, LoadError> {
    let mut budget = limits.max_total_bytes;
    let text = read(path, limits, &mut budget, path)?;
    load_sources([(path.to_path_buf(), text)])
}

/// Loads every `*.yaml` / `*.yml` file of a directory (sorted by name), merges them and
/// validates the result, within the default [`Limits`].
pub fn load_dir(dir: &Path) -> Result<State, LoadError> {
    load_dir_limited(dir, &Limits::default())
}

/// [`load_dir`] within `limits`.
pub fn load_dir_limited(dir: &Path, limits: &Limits) -> Result<State, LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json");
        // Whatever the name points to must be a readable regular file (checked when it is
        // opened): symlinks are followed (ConfigMap mounts link each file into `..data/`).
        if yaml && !name.starts_with('.') {
            if files.len() == limits.max_files {
                return Err(LoadError::TooManyFiles {
                    dir: dir.to_path_buf(),
                    limit: limits.max_files,
                });
            }
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(LoadError::NoFiles {
            dir: dir.to_path_buf(),
        });
    }
    files.sort();
    let mut sources = Vec::with_capacity(files.len());
    let mut errors = Vec::new();
    let mut budget = limits.max_total_bytes;
    for f in files {
        match read(&f, limits, &mut budget, dir) {
            Ok(text) => sources.push((f, text)),
            // Past the total, nothing more is read.
            Err(e @ LoadError::TotalTooLarge { .. }) => return Err(e),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(one_or_several(errors));
    }
    load_sources(sources)
}

/// A file or a directory, within the default [`Limits`].
pub fn load_path(path: &Path) -> Result<State, LoadError> {
    load_path_limited(path, &Limits::default())
}

/// [`load_path`] within `limits`.
pub fn load_path_limited(path: &Path, limits: &Limits) -> Result<State, LoadError> {
    if path.is_dir() {
        load_dir_limited(path, limits)
    } else {
        load_file_limited(path, limits)
    }
}

/// Parses, merges (in the given order) and validates YAML texts, each named by the path that
/// errors report for it. This is what [`load_dir`] does after reading the files; it also loads
/// embedded states (see [`crate::example`]).
pub fn load_sources<I, P, S>(sources: I) -> Result<State, LoadError>
where
    I: IntoIterator<Item = (P, S)>,
    P: Into<PathBuf>,
    S: AsRef<str>,
{
    let mut parts = Vec::new();
    let mut errors = Vec::new();
    for (path, text) in sources {
        let path = path.into();
        match parse(&path, text.as_ref()) {
            Ok(part) => parts.push((path, part)),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(one_or_several(errors));
    }
    let (state, origins, mut problems) = merge(parts);
    if let Err(e) = validate_with_origins(&state, Some(&origins)) {
        problems.extend(e.problems);
    }
    if problems.is_empty() {
        Ok(state)
    } else {
        Err(ValidationError { problems }.into())
    }
}

fn one_or_several(mut errors: Vec<LoadError>) -> LoadError {
    if errors.len() == 1 {
        errors.remove(0)
    } else {
        LoadError::Several(errors)
    }
}

/// Reads one state file whole, or says why not: it must open (a dangling symlink or a symlink
/// loop does not), be a regular file (`fstat` of the opened file: a directory, FIFO, socket or
/// device is refused; opened non-blocking so a FIFO cannot hang the load), and fit both
/// `max_file_bytes` and what is left of the directory's `budget` (taken from it). `dir` names
/// the directory in a total-size error.
fn read(path: &Path, limits: &Limits, budget: &mut u64, dir: &Path) -> Result<String, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let not_a_file = |what: String| LoadError::NotAFile {
        path: path.to_path_buf(),
        what,
    };
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => {
            let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            return Err(match (link, e.raw_os_error()) {
                (true, Some(libc::ELOOP)) => not_a_file("a symlink loop".into()),
                (true, _) if e.kind() == std::io::ErrorKind::NotFound => {
                    let target = std::fs::read_link(path)
                        .map(|t| t.display().to_string())
                        .unwrap_or_else(|_| "?".into());
                    not_a_file(format!("a dangling symlink (to {target})"))
                }
                _ => io(e),
            });
        }
    };
    let meta = file.metadata().map_err(io)?;
    let t = meta.file_type();
    if !t.is_file() {
        let what = if t.is_dir() {
            "a directory"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_block_device() || t.is_char_device() {
            "a device"
        } else {
            "not a file"
        };
        return Err(not_a_file(what.into()));
    }
    let too_large = |size| LoadError::FileTooLarge {
        path: path.to_path_buf(),
        size,
        limit: limits.max_file_bytes,
    };
    if meta.len() > limits.max_file_bytes {
        return Err(too_large(meta.len()));
    }
    let over_total = || LoadError::TotalTooLarge {
        dir: dir.to_path_buf(),
        path: path.to_path_buf(),
        limit: limits.max_total_bytes,
    };
    if meta.len() > *budget {
        return Err(over_total());
    }
    // One byte past the limit is enough to know a file grew beyond it after the fstat.
    let cap = limits.max_file_bytes.min(*budget);
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut bytes).map_err(io)?;
    let n = bytes.len() as u64;
    if n > cap {
        return Err(if n > limits.max_file_bytes {
            too_large(n)
        } else {
            over_total()
        });
    }
    *budget -= n;
    String::from_utf8(bytes).map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8: {e}"),
        ))
    })
}

fn parse(path: &Path, text: &str) -> Result<Part, LoadError> {
    if path.extension().is_some_and(|e| e == "json") {
        // The bulk format: the same schema, parsed ~20x faster than YAML (100k services).
        return serde_json::from_str::<Option<Part>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|source| LoadError::Json {
                path: path.to_path_buf(),
                source,
            });
    }
    let yaml = |source| LoadError::Yaml {
        path: path.to_path_buf(),
        source,
    };
    // An empty (or comment-only) file is an empty part, not an error.
    yaml_serde::from_str::<Option<Part>>(text)
        .map(Option::unwrap_or_default)
        .map_err(|typed| {
            // The typed pass reports the first *type* error it meets, which for a badly
            // indented line is a misleading "missing field" on the line above the real
            // mistake: a syntax error, if there is one, is the better message. Parsing for it
            // only on failure keeps a good file to one pass (half the time of a large state).
            match yaml_serde::from_str::<yaml_serde::Value>(text) {
                Err(syntax) => yaml(syntax),
                Ok(_) => yaml(typed),
            }
        })
}

/// Concatenates the parts in order, recording where each item came from. Returns the problems
/// the merge itself finds (`node` or `conntrack` set by two files).
fn merge(parts: Vec<(PathBuf, Part)>) -> (State, Origins, Vec<Problem>) {
    let mut state = State::default();
    let mut origins = Origins::default();
    let mut problems = Vec::new();
    for (f, (path, part)) in parts.into_iter().enumerate() {
        fn take<T>(into: &mut Vec<T>, from: Vec<T>, origin: &mut Vec<(usize, usize)>, f: usize) {
            origin.extend((0..from.len()).map(|i| (f, i)));
            into.extend(from);
        }
        let o = &mut origins.items;
        take(
            &mut state.interfaces,
            part.interfaces,
            &mut o[Section::Interfaces as usize],
            f,
        );
        take(
            &mut state.endpoints,
            part.endpoints,
            &mut o[Section::Endpoints as usize],
            f,
        );
        take(
            &mut state.ipcache,
            part.ipcache,
            &mut o[Section::Ipcache as usize],
            f,
        );
        take(
            &mut state.external_workloads,
            part.external_workloads,
            &mut o[Section::External as usize],
            f,
        );
        take(
            &mut state.services,
            part.services,
            &mut o[Section::Services as usize],
            f,
        );
        take(
            &mut state.policies,
            part.policies,
            &mut o[Section::Policies as usize],
            f,
        );
        if let Some(node) = part.node {
            match origins.node {
                Some(first) => problems.push(Problem {
                    file: Some(path.clone()),
                    field: "node".into(),
                    reason: format!(
                        "node is already set in {}; only one file may set it",
                        origins.files[first].display()
                    ),
                }),
                None => {
                    state.node = node;
                    origins.node = Some(f);
                }
            }
        }
        if let Some(ct) = part.conntrack {
            match origins.conntrack {
                Some(first) => problems.push(Problem {
                    file: Some(path.clone()),
                    field: "conntrack".into(),
                    reason: format!(
                        "conntrack is already set in {}; only one file may set it",
                        origins.files[first].display()
                    ),
                }),
                None => {
                    state.conntrack = ct;
                    origins.conntrack = Some(f);
                }
            }
        }
        origins.files.push(path);
    }
    (state, origins, problems)
}
