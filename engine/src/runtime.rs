//! Finding and loading the ONNX Runtime shared library, once per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{EngineError, Result};

/// The library file names tried in a folder, newest first.
const LIBRARY_NAMES: &[&str] = &[
    "libonnxruntime.so",
    "libonnxruntime.so.1.32.0",
    "libonnxruntime.so.1.31.1",
    "libonnxruntime.dylib",
    "onnxruntime.dll",
];

/// Where the set-up script puts the library, relative to the project root.
pub const PROJECT_LOCAL_DIR: &str = ".ort/lib";

static ENVIRONMENT: OnceLock<(ort::environment::Environment, PathBuf)> = OnceLock::new();

/// Where ONNX Runtime was found and how.
#[derive(Debug, Clone)]
pub struct RuntimeInfo {
    pub library: PathBuf,
}

/// Candidate library paths in lookup order: an explicit path (`--ort-lib` / config), then
/// `ORT_DYLIB_PATH`, then the project-local folder next to the current directory or any
/// ancestor of the executable (so `target/release/safegate` finds `<repo>/.ort/lib`).
pub fn candidate_paths(explicit: Option<&Path>, env_value: Option<&str>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_path_buf());
        return out;
    }
    if let Some(v) = env_value.filter(|v| !v.is_empty()) {
        out.push(PathBuf::from(v));
        return out;
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    for root in roots {
        for name in LIBRARY_NAMES {
            out.push(root.join(PROJECT_LOCAL_DIR).join(name));
        }
    }
    out
}

/// Loads ONNX Runtime (once) and returns where it came from. A missing or unloadable library
/// is an error that says how to get one, never a panic.
pub fn init(explicit: Option<&Path>) -> Result<RuntimeInfo> {
    if let Some((_, path)) = ENVIRONMENT.get() {
        return Ok(RuntimeInfo {
            library: path.clone(),
        });
    }
    let env_value = std::env::var("ORT_DYLIB_PATH").ok();
    let candidates = candidate_paths(explicit, env_value.as_deref());
    let explicit_given = explicit.is_some() || env_value.as_deref().is_some_and(|v| !v.is_empty());
    let found = candidates.iter().find(|p| p.is_file()).cloned();
    let Some(path) = found else {
        let tried = if explicit_given {
            candidates
                .first()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        } else {
            format!("./{PROJECT_LOCAL_DIR} and the executable's parent folders")
        };
        return Err(EngineError::RuntimeNotFound(format!(
            "ONNX Runtime library not found (looked in {tried}). Run `scripts/setup.sh` \
             (or `scripts/setup.sh --gpu` for CUDA) to fetch it from PyPI, or point \
             --ort-lib / ORT_DYLIB_PATH at libonnxruntime.so"
        )));
    };
    let builder = ort::init_from(&path).map_err(|e| EngineError::RuntimeLoad {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let env = builder
        .with_name("safegate")
        .build()
        .map_err(|e| EngineError::RuntimeLoad {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let (_, path) = ENVIRONMENT.get_or_init(|| (env, path));
    Ok(RuntimeInfo {
        library: path.clone(),
    })
}

pub(crate) fn environment() -> Result<&'static ort::environment::Environment> {
    ENVIRONMENT
        .get()
        .map(|(env, _)| env)
        .ok_or_else(|| EngineError::RuntimeNotFound("ONNX Runtime was not initialised".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_path_wins_over_environment() {
        let c = candidate_paths(Some(Path::new("/x/lib.so")), Some("/y/lib.so"));
        assert_eq!(c, vec![PathBuf::from("/x/lib.so")]);
        let c = candidate_paths(None, Some("/y/lib.so"));
        assert_eq!(c, vec![PathBuf::from("/y/lib.so")]);
    }

    #[test]
    fn project_local_folder_is_searched() {
        let c = candidate_paths(None, None);
        assert!(c.iter().any(|p| p.ends_with(".ort/lib/libonnxruntime.so")));
    }
}
