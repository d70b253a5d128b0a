//! Files symres keeps in a directory (the index directory, and the caches
//! built on it): written so that no one else can make symres write
//! anywhere else, or read what they planted.
//!
//! symres runs as root (behind leakd-attach, or by hand with sudo) while
//! its directory may be a user's (`~/.cache` under a sudo that keeps HOME,
//! or a shared `--index-dir`). Whoever can write to the directory can put
//! a symlink where symres will write, or a file where it will read. So:
//! the directory is opened once, without following a symlink, and checked
//! (ours or root's and writable only by its owner; or sticky, like /tmp,
//! with the files we read being ours); every file is created exclusively
//! (`O_EXCL`: a planted symlink or file makes the create fail, never
//! redirects it) under a name no one can guess in advance, and put in
//! place by an atomic rename inside the directory (a reader sees the old
//! file or the new one, never half of one; a symlink at the final name is
//! replaced, not followed); files are opened for reading without
//! following a symlink, and only regular ones.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};

/// An open, checked directory.
#[derive(Debug)]
pub struct StoreDir {
    dir: File,
    path: PathBuf,
    /// Others than its owner may add files: a file is read only if ours.
    shared: bool,
}

/// A file in a directory, as `StoreDir::entries` lists it.
#[derive(Debug)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    /// Modification time: seconds since the epoch, nanoseconds.
    pub modified: (i64, i64),
}

/// A new file in a directory, not yet under its name (removed if dropped
/// before `StoreDir::commit`).
#[derive(Debug)]
pub struct TempFile<'a> {
    pub file: File,
    name: String,
    dir: &'a StoreDir,
    committed: bool,
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// A file or directory owned by us or by root: no one else can have
/// planted it.
fn trusted_owner(uid: u32) -> bool {
    uid == euid() || uid == 0
}

fn refused(path: &Path, why: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("{}: {why}, refused", path.display()))
}

impl StoreDir {
    /// The existing directory `path`, checked.
    pub fn open(path: &Path) -> io::Result<StoreDir> {
        // O_NOFOLLOW: the directory itself is not a symlink (its parents
        // are the user's choice of where it is).
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(None, path, flags, Mode::empty()).map_err(|e| {
            if e == nix::errno::Errno::ELOOP {
                refused(path, "a symbolic link".into())
            } else {
                io::Error::from(e)
            }
        })?;
        // SAFETY: `fd` was just returned by openat and is owned by nothing
        // else; the File closes it.
        let dir = unsafe { File::from_raw_fd(fd) };
        let md = dir.metadata()?;
        let sticky = md.mode() & 0o1000 != 0;
        let others_write = md.mode() & 0o022 != 0;
        if !trusted_owner(md.uid()) && !sticky {
            return Err(refused(
                path,
                format!("owned by uid {}, not by uid {} (nor sticky)", md.uid(), euid()),
            ));
        }
        if others_write && !sticky {
            return Err(refused(
                path,
                format!("writable by others (mode {:o}) and not sticky", md.mode() & 0o7777),
            ));
        }
        Ok(StoreDir { dir, path: path.to_path_buf(), shared: sticky || !trusted_owner(md.uid()) })
    }

    /// `open`, creating the directory (and its parents) first if need be,
    /// readable only by its owner.
    pub fn create(path: &Path) -> io::Result<StoreDir> {
        if !path.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        }
        StoreDir::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new, empty file in the directory, created exclusively (never
    /// through a symlink, never an existing file) under a name that starts
    /// with `.{stem}.` and ends in random digits.
    pub fn create_temp(&self, stem: &str) -> io::Result<TempFile<'_>> {
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
        for _ in 0..64 {
            let name = format!(".{stem}.{:016x}", random());
            match openat(
                Some(self.dir.as_raw_fd()),
                name.as_str(),
                flags,
                Mode::from_bits_truncate(0o644),
            ) {
                Ok(fd) => {
                    // SAFETY: `fd` was just returned by openat and is owned
                    // by nothing else; the File closes it.
                    let file = unsafe { File::from_raw_fd(fd) };
                    return Ok(TempFile { file, name, dir: self, committed: false });
                }
                // Someone's file or link under that name: another name.
                Err(nix::errno::Errno::EEXIST) => {
                    last = io::Error::from(io::ErrorKind::AlreadyExists)
                }
                Err(e) => {
                    return Err(io::Error::new(
                        io::Error::from(e).kind(),
                        format!("{}: cannot create a file: {e}", self.path.display()),
                    ))
                }
            }
        }
        Err(last)
    }

    /// Put `tmp` in place as `name`, atomically (replacing whatever entry
    /// was there, a planted symlink included, without following it).
    pub fn commit(&self, mut tmp: TempFile<'_>, name: &str) -> io::Result<PathBuf> {
        tmp.file.sync_data()?;
        let fd = Some(self.dir.as_raw_fd());
        renameat(fd, tmp.name.as_str(), fd, name).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("{}: {e}", self.path.join(name).display()),
            )
        })?;
        tmp.committed = true;
        Ok(self.path.join(name))
    }

    /// `commit` without waiting for the data to reach the disk: for a
    /// cache, which a crash may lose (its readers check a CRC), but whose
    /// fsync would hold up the end of every run.
    pub fn commit_unsynced(&self, mut tmp: TempFile<'_>, name: &str) -> io::Result<PathBuf> {
        let fd = Some(self.dir.as_raw_fd());
        renameat(fd, tmp.name.as_str(), fd, name).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("{}: {e}", self.path.join(name).display()),
            )
        })?;
        tmp.committed = true;
        Ok(self.path.join(name))
    }

    /// The regular files in the directory (not through symlinks), with
    /// their sizes and modification times.
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.path)? {
            let Ok(e) = e else { continue };
            let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
            // symlink_metadata: a link is not followed (nor listed).
            let Ok(md) = e.metadata() else { continue };
            if md.is_file() {
                out.push(Entry { name, size: md.len(), modified: (md.mtime(), md.mtime_nsec()) });
            }
        }
        Ok(out)
    }

    /// Remove the file `name` (a link is removed, not followed).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        unlinkat(Some(self.dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
            .map_err(io::Error::from)
    }

    /// The regular file `name` for reading (`Ok(None)` when there is none),
    /// not through a symlink; in a directory others can add to, only one
    /// of ours. Opened without blocking (a FIFO put there cannot stall).
    pub fn open_file(&self, name: &str) -> io::Result<Option<File>> {
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_CLOEXEC
            | OFlag::O_NOCTTY;
        let fd = match openat(Some(self.dir.as_raw_fd()), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(nix::errno::Errno::ELOOP) => {
                return Err(refused(&self.path.join(name), "a symbolic link".into()))
            }
            Err(e) => return Err(io::Error::from(e)),
        };
        // SAFETY: `fd` was just returned by openat and is owned by nothing
        // else; the File closes it.
        let file = unsafe { File::from_raw_fd(fd) };
        let md = file.metadata()?;
        if !md.is_file() {
            return Err(refused(&self.path.join(name), "not a regular file".into()));
        }
        if self.shared && !trusted_owner(md.uid()) {
            return Err(refused(
                &self.path.join(name),
                format!("owned by uid {} in a directory others write to", md.uid()),
            ));
        }
        Ok(Some(file))
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if !self.committed {
            // Our own file, created exclusively: no one can have swapped
            // it (in a sticky directory only we may remove it).
            let _ = unlinkat(
                Some(self.dir.dir.as_raw_fd()),
                self.name.as_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// 64 bits no one can predict: from the kernel's random pool, else the
/// clock and the pid mixed (names only need to be unguessed and new; the
/// create is exclusive either way).
fn random() -> u64 {
    let mut b = [0u8; 8];
    if File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut b)).is_ok() {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ u64::from(std::process::id()).rotate_left(32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tempdir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("symres-store-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Files go in by rename, over a planted symlink, whose target stays
    /// as it was; reads never follow a link; a dropped temp file is gone.
    #[test]
    fn planted_links_are_replaced_never_followed() {
        let base = tempdir("links");
        let dir = base.join("d");
        std::fs::create_dir(&dir).unwrap();
        let victim = base.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        symlink(&victim, dir.join("x.index")).unwrap();
        symlink(&victim, dir.join("y.index")).unwrap();
        let store = StoreDir::open(&dir).unwrap();
        assert!(store.open_file("y.index").is_err(), "a symlink was read");
        assert!(store.open_file("none").unwrap().is_none());
        let mut tmp = store.create_temp("x.index").unwrap();
        tmp.file.write_all(b"new").unwrap();
        store.commit(tmp, "x.index").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let mut s = String::new();
        store.open_file("x.index").unwrap().unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "new");
        drop(store.create_temp("gone").unwrap());
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["x.index", "y.index"]);
        // The directory itself a symlink: refused.
        symlink(&dir, base.join("link")).unwrap();
        assert!(StoreDir::open(&base.join("link")).is_err());
        // Writable by others without the sticky bit: refused; with it, fine.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(StoreDir::open(&dir).is_err());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(StoreDir::open(&dir).is_ok_and(|s| s.shared));
        let _ = std::fs::remove_dir_all(&base);
    }
}
