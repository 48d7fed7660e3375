//! Running a closure inside a pod's network namespace.
//!
//! The plugin is single-threaded: it moves its one thread into the pod's namespace with
//! `setns`, runs the closure (typically opening a netlink socket, which stays bound to that
//! namespace), and moves back, also when the closure fails.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

/// A network namespace held open by its file.
#[derive(Debug)]
pub struct Netns {
    file: File,
}

impl Netns {
    /// Opens the namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`). A path that does
    /// not exist gives `io::ErrorKind::NotFound`.
    pub fn open(path: &Path) -> io::Result<Netns> {
        Ok(Netns {
            file: File::open(path)?,
        })
    }

    /// The namespace this thread is in now.
    pub fn current() -> io::Result<Netns> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` inside this namespace and returns to `home` afterwards.
    pub fn run<T>(&self, home: &Netns, f: impl FnOnce() -> T) -> io::Result<T> {
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|errno| {
            io::Error::new(
                io::Error::from(errno).kind(),
                format!("entering the network namespace: {errno}"),
            )
        })?;
        let out = f();
        setns(&home.file, CloneFlags::CLONE_NEWNET).map_err(|errno| {
            io::Error::other(format!(
                "returning to the node's network namespace: {errno}"
            ))
        })?;
        Ok(out)
    }
}
