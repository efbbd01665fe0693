//! Loading YAML from a file or a directory of files (merged), then validating the result whole.
//!
//! A directory load reads every regular `*.yaml` / `*.yml` file directly in the directory
//! (not recursively; names starting with `.` are skipped, so Kubernetes ConfigMap mounts with
//! their `..data` links work), in byte order of the file names. Lists are concatenated in that
//! order; `node` and `conntrack` may each be set by one file only. Every item remembers the
//! file (and its index in that file) it came from, so a problem found after the merge still
//! names the file an operator has to edit.
//!
//! Nothing is returned unless every file parsed and the merged state validated: a bad file
//! rejects the whole load.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::model::{
    ConntrackSettings, Endpoint, Interface, IpcacheEntry, Node, Policy, Service, State,
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
    #[error("{dir}: no *.yaml or *.yml files in the directory")]
    NoFiles { dir: PathBuf },
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
    /// The (line, column) of a YAML error, both 1-based.
    pub fn yaml_location(&self) -> Option<(usize, usize)> {
        match self {
            LoadError::Yaml { source, .. } => source.location().map(|l| (l.line(), l.column())),
            _ => None,
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

/// Loads one YAML file and validates it.
pub fn load_file(path: &Path) -> Result<State, LoadError> {
    let text = read(path)?;
    load_sources([(path.to_path_buf(), text)])
}

/// Loads every `*.yaml` / `*.yml` file of a directory (sorted by name), merges them and
/// validates the result.
pub fn load_dir(dir: &Path) -> Result<State, LoadError> {
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
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        // `is_file` follows symlinks: ConfigMap mounts link each file into `..data/`.
        if yaml && !name.starts_with('.') && path.is_file() {
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
    for f in files {
        match read(&f) {
            Ok(text) => sources.push((f, text)),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(one_or_several(errors));
    }
    load_sources(sources)
}

/// A file or a directory.
pub fn load_path(path: &Path) -> Result<State, LoadError> {
    if path.is_dir() {
        load_dir(path)
    } else {
        load_file(path)
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

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse(path: &Path, text: &str) -> Result<Part, LoadError> {
    let yaml = |source| LoadError::Yaml {
        path: path.to_path_buf(),
        source,
    };
    // Syntax first: the typed pass alone reports the first *type* error it meets, which for a
    // badly indented line is a misleading "missing field" on the line above the real mistake.
    yaml_serde::from_str::<yaml_serde::Value>(text).map_err(yaml)?;
    // An empty (or comment-only) file is an empty part, not an error.
    yaml_serde::from_str::<Option<Part>>(text)
        .map(Option::unwrap_or_default)
        .map_err(yaml)
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
