//! Opening the files frames name: regular files only, without blocking,
//! and a process's files inside that process's root.
//!
//! A frame's `module` is input: it may name a FIFO (whose open waits for a
//! writer), /sys/kernel/tracing/trace_pipe (a "regular" file whose reads
//! wait for trace data, and consume it), or, with a `pid`, a path inside a
//! container whose absolute symlinks must not lead to the host's files
//! (`/lib/evil.so -> /etc/shadow`). So every file symres reads is opened
//! here: with O_NONBLOCK, checked to be a regular file before a byte is
//! read, read no further than its size says (files of /proc and tracefs
//! say 0), and paths under /proc/PID/root/ are resolved with
//! openat2(RESOLVE_IN_ROOT), as the process itself would resolve them.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Component, Path};

use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

fn read_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY
}

/// `path` split as /proc/PID/root and the rest, when it is such a path.
fn under_proc_root(path: &Path) -> Option<(u32, &Path)> {
    let mut c = path.components();
    if c.next() != Some(Component::RootDir) || c.next() != Some(Component::Normal("proc".as_ref()))
    {
        return None;
    }
    let Some(Component::Normal(pid)) = c.next() else { return None };
    let pid: u32 = pid.to_str()?.parse().ok()?;
    if c.next() != Some(Component::Normal("root".as_ref())) {
        return None;
    }
    Some((pid, c.as_path()))
}

fn owned(fd: std::os::fd::RawFd) -> File {
    // SAFETY: `fd` was just returned by a successful open call and is owned
    // by nothing else; the File closes it.
    unsafe { File::from_raw_fd(fd) }
}

/// Open `path` for reading if it is a regular file (an error of kind
/// `InvalidInput` if it is not). Under /proc/PID/root/, the rest of the
/// path is resolved inside that root: its absolute symlinks and `..` stay
/// in it.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = match under_proc_root(path) {
        Some((pid, rest)) => {
            let root = owned(openat(
                None,
                format!("/proc/{pid}/root").as_str(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?);
            let rest = if rest.as_os_str().is_empty() { Path::new(".") } else { rest };
            let how = OpenHow::new()
                .flags(read_flags())
                .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
            owned(openat2(root.as_raw_fd(), rest, how)?)
        }
        None => owned(openat(None, path, read_flags(), Mode::empty())?),
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    Ok(file)
}

/// The whole of an open regular file, but never more than its size when
/// opened said (a file whose reads never end, or one that grows, cannot
/// make symres wait or grow with it).
pub fn read_bounded(file: &mut File) -> io::Result<Vec<u8>> {
    let len = file.metadata()?.len();
    let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(1 << 30));
    file.take(len).read_to_end(&mut data)?;
    Ok(data)
}

/// `open_regular` then `read_bounded`.
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    read_bounded(&mut open_regular(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_root_paths_are_recognized() {
        assert_eq!(
            under_proc_root(Path::new("/proc/12/root/usr/lib/x.so")),
            Some((12, Path::new("usr/lib/x.so")))
        );
        assert_eq!(under_proc_root(Path::new("/proc/12/root")), Some((12, Path::new(""))));
        assert_eq!(under_proc_root(Path::new("/proc/self/root/x")), None);
        assert_eq!(under_proc_root(Path::new("/proc/12/cwd/x")), None);
        assert_eq!(under_proc_root(Path::new("proc/12/root/x")), None);
        assert_eq!(under_proc_root(Path::new("/usr/lib/x.so")), None);
    }

    /// A FIFO is refused without waiting for a writer; a file that says it
    /// is empty is read as empty (tracefs's trace_pipe says so too).
    #[test]
    fn fifos_refused_and_reads_bounded_by_size() {
        let dir = std::env::temp_dir().join(format!("symres-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let e = open_regular(&fifo).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        let f = dir.join("f");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(read_regular(&f).unwrap(), b"abc");
        assert_eq!(open_regular(&dir).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
