//! Loading YAML from a file or a directory of files (merged), then validating the result whole.

use std::path::{Path, PathBuf};

use crate::model::State;
use crate::validate::{validate, ValidationError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read state from {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{0}")]
    Invalid(#[from] ValidationError),
}

impl State {
    /// Parses and validates one YAML document.
    pub fn from_yaml_str(yaml: &str) -> Result<State, LoadError> {
        let state: State = serde_yaml::from_str(yaml).map_err(|source| LoadError::Yaml {
            path: PathBuf::from("<string>"),
            source,
        })?;
        validate(&state)?;
        Ok(state)
    }
}

/// Loads one YAML file and validates it.
pub fn load_file(path: &Path) -> Result<State, LoadError> {
    let state = parse_file(path)?;
    validate(&state)?;
    Ok(state)
}

/// Loads every `*.yaml` / `*.yml` file of a directory (sorted by name), merges them and
/// validates the result.
pub fn load_dir(dir: &Path) -> Result<State, LoadError> {
    let io = |source| LoadError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml") | Some("yml")
            )
        })
        .collect();
    files.sort();
    let mut merged = State::default();
    for f in &files {
        let part = parse_file(f)?;
        merge(&mut merged, part);
    }
    validate(&merged)?;
    Ok(merged)
}

/// A file or a directory.
pub fn load_path(path: &Path) -> Result<State, LoadError> {
    if path.is_dir() {
        load_dir(path)
    } else {
        load_file(path)
    }
}

fn parse_file(path: &Path) -> Result<State, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_yaml::from_str(&text).map_err(|source| LoadError::Yaml {
        path: path.to_path_buf(),
        source,
    })
}

fn merge(into: &mut State, part: State) {
    if part.node != Default::default() {
        into.node = part.node;
    }
    if part.conntrack != Default::default() {
        into.conntrack = part.conntrack;
    }
    into.interfaces.extend(part.interfaces);
    into.endpoints.extend(part.endpoints);
    into.ipcache.extend(part.ipcache);
    into.services.extend(part.services);
    into.policies.extend(part.policies);
}
