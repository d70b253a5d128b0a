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

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, mkdirat, FileStat, Mode, SFlag};
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
    /// Its owner: in a shared directory, only our own files are ours to
    /// remove.
    pub uid: u32,
}

impl Entry {
    /// Owned by the effective uid (root's files are not a user's, nor a
    /// user's root's).
    pub fn is_ours(&self) -> bool {
        self.uid == euid()
    }
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

/// How a store directory is opened (`O_NOFOLLOW` added where the name
/// is not the user's choice).
const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY).union(OFlag::O_CLOEXEC);

/// The error of opening the directory `path`: a symlink refused (with
/// `O_DIRECTORY`, Linux says ENOTDIR of a link to a directory; the look
/// at what is there only chooses the message).
fn dir_error(path: &Path, e: Errno) -> io::Error {
    let link = || std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if e == Errno::ELOOP || (e == Errno::ENOTDIR && link()) {
        refused(path, "a symbolic link".into())
    } else {
        io::Error::new(io::Error::from(e).kind(), format!("{}: {e}", path.display()))
    }
}

fn is_regular(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG
}

fn refused(path: &Path, why: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("{}: {why}, refused", path.display()))
}

impl StoreDir {
    /// The existing directory `path`, checked.
    pub fn open(path: &Path) -> io::Result<StoreDir> {
        // O_NOFOLLOW: the directory itself is not a symlink (its parents
        // are the user's choice of where it is).
        let fd = openat(None, path, DIR_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())
            .map_err(|e| dir_error(path, e))?;
        // SAFETY: `fd` was just returned by openat and is owned by nothing
        // else; the File closes it.
        StoreDir::checked(unsafe { File::from_raw_fd(fd) }, path)
    }

    /// The open directory `dir`, found at `path`, if it passes the checks.
    fn checked(dir: File, path: &Path) -> io::Result<StoreDir> {
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
    /// readable only by its owner. The deepest ancestor that exists is the
    /// user's choice of where (a symlink there is followed, as in `open`);
    /// below it each missing directory is made and opened relative to its
    /// parent's descriptor, never through a symlink, so a link planted at
    /// a name not yet made cannot take the directory elsewhere.
    pub fn create(path: &Path) -> io::Result<StoreDir> {
        let mut missing: Vec<&OsStr> = Vec::new();
        let mut at = path;
        let top = loop {
            match openat(None, at, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => break fd,
                Err(Errno::ENOENT) => {}
                Err(e) => return Err(dir_error(at, e)),
            }
            let (Some(name), Some(parent)) = (at.file_name(), at.parent()) else {
                return Err(dir_error(at, Errno::ENOENT));
            };
            missing.push(name);
            at = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
        };
        // SAFETY: `top` was just returned by openat and is owned by nothing
        // else; the File closes it.
        let top = unsafe { File::from_raw_fd(top) };
        if missing.is_empty() {
            return StoreDir::open(path);
        }
        missing.reverse();
        StoreDir::create_below(top, &missing, path)
    }

    /// The directories `names`, each in the one before, under `top`:
    /// made if missing, opened without following a symlink, and checked
    /// (one someone else made first is ours only if `open` would take it).
    fn create_below(top: File, names: &[&OsStr], path: &Path) -> io::Result<StoreDir> {
        let mut parent = top;
        let mut so_far = path.to_path_buf();
        for _ in names {
            so_far.pop();
        }
        for (i, name) in names.iter().enumerate() {
            so_far.push(name);
            match mkdirat(Some(parent.as_raw_fd()), *name, Mode::from_bits_truncate(0o700)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(dir_error(&so_far, e)),
            }
            let fd = openat(
                Some(parent.as_raw_fd()),
                *name,
                DIR_FLAGS | OFlag::O_NOFOLLOW,
                Mode::empty(),
            )
            .map_err(|e| dir_error(&so_far, e))?;
            // SAFETY: `fd` was just returned by openat and is owned by
            // nothing else; the File closes it.
            let dir = unsafe { File::from_raw_fd(fd) };
            let checked = StoreDir::checked(dir, &so_far)?;
            if i + 1 == names.len() {
                return Ok(checked);
            }
            parent = checked.dir;
        }
        StoreDir::checked(parent, path)
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
        let fixed = test_random();
        for attempt in 0..64 {
            let r = fixed.get(attempt).copied().unwrap_or_else(random);
            let name = format!(".{stem}.{r:016x}");
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
    pub fn commit(&self, tmp: TempFile<'_>, name: &str) -> io::Result<PathBuf> {
        tmp.file.sync_data()?;
        self.commit_unsynced(tmp, name)
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
    /// their sizes, modification times and owners. Listed through the
    /// descriptor held since `open` (the path may lead elsewhere by now).
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        let fd = openat(Some(self.dir.as_raw_fd()), ".", DIR_FLAGS, Mode::empty())?;
        let mut dir = nix::dir::Dir::from_fd(fd)?;
        let dir_fd = dir.as_raw_fd();
        let mut out = Vec::new();
        for e in dir.iter() {
            let Ok(e) = e else { continue };
            let Ok(name) = e.file_name().to_str() else { continue };
            if name == "." || name == ".." {
                continue;
            }
            // AT_SYMLINK_NOFOLLOW: a link is not followed (nor listed).
            let Ok(st) = fstatat(Some(dir_fd), name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
                continue;
            };
            if is_regular(&st) {
                out.push(Entry {
                    name: name.to_string(),
                    size: u64::try_from(st.st_size).unwrap_or(0),
                    modified: (st.st_mtime, st.st_mtime_nsec),
                    uid: st.st_uid,
                });
            }
        }
        Ok(out)
    }

    /// Remove the file `name` if it is ours (a link is removed, not
    /// followed). In a sticky directory root could remove anyone's file:
    /// only the effective uid's are removed, others are refused.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        let fd = Some(self.dir.as_raw_fd());
        let st = fstatat(fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io::Error::from)?;
        if st.st_uid != euid() {
            return Err(refused(
                &self.path.join(name),
                format!("owned by uid {}, not ours to remove", st.st_uid),
            ));
        }
        unlinkat(fd, name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from)
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

/// The random parts a test fixes for the first attempts of each
/// `create_temp` (hex, comma-separated, in `LEAKD_SYMRES_TEST_TEMP_NAMES`),
/// so that it can plant files at exactly the names symres will try: the
/// exclusive create is what must keep them harmless, not the names being
/// unguessed. Empty (all random) when unset, as in every real run.
fn test_random() -> Vec<u64> {
    std::env::var("LEAKD_SYMRES_TEST_TEMP_NAMES")
        .map(|v| v.split(',').filter_map(|h| u64::from_str_radix(h.trim(), 16).ok()).collect())
        .unwrap_or_default()
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

    /// `entries` lists the directory symres opened, through its
    /// descriptor: once the path leads to another directory (renamed away
    /// and replaced), that one's names are not listed.
    #[test]
    fn entries_come_from_the_open_directory() {
        let base = tempdir("entries");
        let dir = base.join("d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("ours.answers"), "12345").unwrap();
        symlink(base.join("nowhere"), dir.join("link.answers")).unwrap();
        let store = StoreDir::open(&dir).unwrap();
        std::fs::rename(&dir, base.join("moved")).unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("planted.answers"), "x").unwrap();
        let e = store.entries().unwrap();
        let got: Vec<(&str, u64, bool)> =
            e.iter().map(|e| (e.name.as_str(), e.size, e.is_ours())).collect();
        assert_eq!(got, [("ours.answers", 5, true)]);
        let _ = std::fs::remove_dir_all(&base);
    }

    /// `create` makes each missing directory relative to its parent and
    /// never through a symlink: a link planted at a name not yet made
    /// (after the existing ancestor was opened) is refused, and nothing
    /// is made where it points.
    #[test]
    fn create_never_follows_a_planted_parent() {
        let base = tempdir("create");
        let made = StoreDir::create(&base.join("a/b/c")).unwrap();
        assert_eq!(made.path(), base.join("a/b/c"));
        for d in ["a", "a/b", "a/b/c"] {
            let md = std::fs::symlink_metadata(base.join(d)).unwrap();
            assert!(md.is_dir(), "{d}");
            assert_eq!(md.mode() & 0o077, 0, "{d}: {:o}", md.mode());
        }
        assert!(StoreDir::create(&base.join("a/b/c")).is_ok(), "exists: opened");
        let victim = base.join("victim");
        std::fs::create_dir(&victim).unwrap();
        // The race: the ancestor `base` is open, then `x` appears as a link.
        let top = File::open(&base).unwrap();
        symlink(&victim, base.join("x")).unwrap();
        let names = [OsStr::new("x"), OsStr::new("y")];
        let e = StoreDir::create_below(top, &names, &base.join("x/y")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
        // A link as the last component, too.
        let top = File::open(&base).unwrap();
        let e = StoreDir::create_below(top, &[OsStr::new("x")], &base.join("x")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let _ = std::fs::remove_dir_all(&base);
    }
}
