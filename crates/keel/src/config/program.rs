//! Where a pool's `command[0]` is found.

use std::path::{Path, PathBuf};

/// Resolves a pool's program the way `docs/configuration.md` promises:
///
/// - an absolute path is used as is;
/// - a relative path containing '/' is taken relative to `base_dir` (the config file's
///   directory), so a config can sit next to the app it runs;
/// - a bare name is looked up first in the directory of the running `keel` executable, so the
///   bundled `keel-demo-worker` installed beside it is found with no PATH set up, and otherwise
///   left as is for PATH lookup when the worker is spawned.
pub fn resolve_program(name: &str, base_dir: &Path) -> String {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    resolve_program_in(name, base_dir, exe_dir.as_deref())
}

fn resolve_program_in(name: &str, base_dir: &Path, exe_dir: Option<&Path>) -> String {
    let path = Path::new(name);
    if path.is_absolute() {
        return name.to_owned();
    }
    if name.contains('/') {
        // Collecting components drops the "." in "./worker" without touching "..".
        let joined: PathBuf = base_dir.join(path).components().collect();
        return joined.to_string_lossy().into_owned();
    }
    match exe_dir.map(|dir| dir.join(name)) {
        Some(beside_keel) if is_executable_file(&beside_keel) => {
            beside_keel.to_string_lossy().into_owned()
        }
        _ => name.to_owned(),
    }
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn absolute_paths_are_kept() {
        assert_eq!(
            resolve_program_in("/usr/bin/env", Path::new("/srv"), None),
            "/usr/bin/env"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let base = Path::new("/srv/shop");
        assert_eq!(
            resolve_program_in("bin/worker", base, None),
            "/srv/shop/bin/worker"
        );
        assert_eq!(
            resolve_program_in("./worker", base, None),
            "/srv/shop/worker"
        );
        assert_eq!(
            resolve_program_in("../worker", base, None),
            "/srv/shop/../worker"
        );
    }

    #[test]
    fn bare_names_prefer_an_executable_beside_keel_then_fall_back_to_path() {
        let exe_dir = tempfile::tempdir().unwrap();
        let bundled = exe_dir.path().join("keel-demo-worker");
        std::fs::write(&bundled, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bundled, std::fs::Permissions::from_mode(0o755)).unwrap();
        let not_executable = exe_dir.path().join("notes");
        std::fs::write(&not_executable, "").unwrap();

        let base = Path::new("/srv");
        let found = resolve_program_in("keel-demo-worker", base, Some(exe_dir.path()));
        assert_eq!(found, bundled.to_string_lossy());
        assert_eq!(
            resolve_program_in("notes", base, Some(exe_dir.path())),
            "notes"
        );
        assert_eq!(
            resolve_program_in("python3", base, Some(exe_dir.path())),
            "python3"
        );
        assert_eq!(resolve_program_in("python3", base, None), "python3");
    }
}
