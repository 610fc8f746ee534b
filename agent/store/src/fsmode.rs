//! File modes of what the agent and the sink write: data (queue, journal, control store,
//! keys) is the owner's only, 0600 files in 0700 directories, whatever the umask; outputs
//! take a configured mode. Every place that creates a data directory or file calls one
//! of these, which also tightens files left readable by older versions.
//!
//! On other systems than Unix these only create directories.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Mode of a data file.
pub const PRIVATE_FILE: u32 = 0o600;
/// Mode of a data directory.
pub const PRIVATE_DIR: u32 = 0o700;

/// Creates `dir` and its missing parents as 0700, and makes an existing `dir` 0700 if
/// the agent owns it (never a shared directory such as `/tmp`, which it does not own, or
/// a sticky one).
pub fn data_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(PRIVATE_DIR)
            .create(dir)?;
        let meta = std::fs::metadata(dir)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        let mode = meta.permissions().mode();
        if meta.uid() == me && mode & 0o1000 == 0 && mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR))?;
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Makes what this process creates from now on owner-only (umask 077), so a file that
/// a library creates (redb) is never readable by others, not even for a moment. Called
/// once at the start of `agent` and `sink`; the systemd units set `UMask=0077` too.
pub fn owner_only_umask() {
    #[cfg(unix)]
    // SAFETY: umask has no preconditions and cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Creates an output directory for files of `mode`: owner-only, plus search and read
/// for whoever may read the files (0640 files: a 0750 directory).
pub fn output_dir(dir: &Path, mode: u32) -> io::Result<()> {
    data_dir(dir)?;
    let shared = mode & 0o066;
    if shared != 0 {
        let bits = mode & 0o044;
        set_mode(dir, PRIVATE_DIR | bits | (bits >> 2))?;
    }
    Ok(())
}

/// Sets `path`'s mode (a missing file is not an error: it may not exist yet).
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// Makes a data file (a redb file, a key) 0600.
pub fn private_file(path: &Path) -> io::Result<()> {
    set_mode(path, PRIVATE_FILE)
}

/// Opens `path` for writing, created with `mode` (and given `mode` if it existed).
pub fn create_file(path: &Path, mode: u32, truncate: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(truncate);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let f = opts.open(path)?;
    set_mode(path, mode)?;
    Ok(f)
}

/// Parses an octal file mode such as `"0640"` (config keys).
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "`{text}` is not an octal file mode such as \"0600\""
        )),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn data_dirs_and_files_are_private_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        data_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        data_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700, "an old 0755 data dir is tightened");
        let f = dir.join("x");
        std::fs::write(&f, b"1").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        create_file(&dir.join("y"), 0o640, true).unwrap();
        assert_eq!(mode(&dir.join("y")), 0o640);
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert!(parse_mode("0999").is_err());
    }
}

/// Renames a corrupt data file to `<name>.corrupt-<unix seconds>` beside it (`-N` added if
/// that name is taken), owner-only, so it can be salvaged later and is never opened again.
pub fn set_aside(path: &Path) -> io::Result<std::path::PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut aside = path.with_extension(format!("{ext}.corrupt-{secs}"));
    let mut n = 1;
    while aside.exists() {
        aside = path.with_extension(format!("{ext}.corrupt-{secs}-{n}"));
        n += 1;
    }
    std::fs::rename(path, &aside)?;
    private_file(&aside)?;
    Ok(aside)
}
