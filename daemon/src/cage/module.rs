//! Finding the `iron_cage` package, and starting a Python agent with it.
//!
//! Layout: a directory (the one put on `PYTHONPATH`) holding the package
//! `iron_cage/` with `__init__.py`, `_run.py` and the extension module
//! `_native.abi3.so`. Looked for, in order: `[daemon] python_path` in the
//! config; `<directory of ironcaged>/python` (the build tree: scripts/test.sh
//! and scripts/demo.sh put it in `target/debug/python`); and
//! `<directory of ironcaged>/../lib/ironcage/python` (`make install`).

use std::path::{Path, PathBuf};

/// The files a usable package directory holds.
const REQUIRED: &[&str] = &[
    "iron_cage/__init__.py",
    "iron_cage/_run.py",
    "iron_cage/_native.abi3.so",
];

/// The `-c` program a Python agent runs: imports `iron_cage` (which opens the
/// channel) then runs the script as `__main__`, see `iron_cage/_run.py`. An
/// interpreter that cannot import the module exits 3 with a clear message.
pub const BOOTSTRAP: &str = "import sys
try:
    import iron_cage._run as _iron_cage_run
except BaseException as e:
    sys.stderr.write('ironcaged: %s (Python %s) cannot import the iron_cage module from PYTHONPATH (Python 3.9 or later is needed): %r\\n' % (sys.executable, sys.version.split()[0], e))
    sys.exit(3)
_iron_cage_run.main()
";

/// Whether `dir` holds a complete `iron_cage` package.
pub fn is_module_dir(dir: &Path) -> bool {
    REQUIRED.iter().all(|f| dir.join(f).is_file())
}

/// Where the daemon looks when the config names no `python_path`.
pub fn default_candidates() -> Vec<PathBuf> {
    let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    else {
        return Vec::new();
    };
    vec![
        exe_dir.join("python"),
        exe_dir.join("../lib/ironcage/python"),
    ]
}

/// The package directory: `configured` if given (it must be complete), else
/// the first complete default. The error lists every place looked at.
pub fn find(configured: Option<&Path>) -> Result<PathBuf, String> {
    let candidates = match configured {
        Some(p) => vec![p.to_path_buf()],
        None => default_candidates(),
    };
    if let Some(found) = candidates.iter().find(|d| is_module_dir(d)) {
        return Ok(std::fs::canonicalize(found).unwrap_or_else(|_| found.clone()));
    }
    let looked = candidates
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(format!(
        "a Python agent needs the iron_cage module, which is not installed: looked for {} in {looked}; \
         build it (scripts/test.sh or `make build`), install it (`make install`), or set [daemon] python_path",
        REQUIRED.join(" + ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_needs_every_file() {
        let d = tempfile::tempdir().unwrap();
        let e = find(Some(d.path())).unwrap_err();
        assert!(e.contains(&d.path().display().to_string()), "{e}");
        assert!(e.contains("_native.abi3.so"), "{e}");
        std::fs::create_dir(d.path().join("iron_cage")).unwrap();
        for f in REQUIRED {
            assert!(find(Some(d.path())).is_err());
            std::fs::write(d.path().join(f), "").unwrap();
        }
        assert_eq!(
            find(Some(d.path())).unwrap(),
            d.path().canonicalize().unwrap()
        );
    }
}
