//! Where a sandbox's relay socket lives. The layout moved twice between
//! runtime lines, and a machine may run sandboxes of several lines at once,
//! so a name is resolved against every layout, newest first:
//!
//! 1. `$MSB_HOME/run/sandboxes/<hex(sha256(name))[..24]>/agent.sock`, with
//!    `control.sock` beside it (0.6.9 and later);
//! 2. `$MSB_HOME/run/agent/<hex(sha256(name))[..32]>.sock` (0.5.2 to 0.6.8);
//! 3. `$MSB_HOME/sandboxes/<name>/runtime/agent.sock` (up to 0.5.1).
//!
//! The first candidate that exists wins. When none exists (the sandbox is
//! not running, or not yet), the answer is the first candidate whose socket
//! paths fit in `sockaddr_un`, so that the caller gets the connect error of
//! the layout a new sandbox would use.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::{Error, Result};

/// Longest name accepted: the legacy layout uses the name as one directory
/// name, and no filesystem we run on holds a longer one.
const MAX_NAME_LEN: usize = 255;

/// Bytes a Unix socket path may have, not counting the terminating NUL.
fn max_socket_path_len() -> usize {
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_path.len() - 1
}

/// The hex digits of the SHA-256 of `name`, lower case.
fn name_digest_hex(name: &str) -> String {
    Sha256::digest(name.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One place a sandbox's relay socket may be, with every socket path of
/// that layout that must fit in `sockaddr_un`.
struct Candidate {
    agent: PathBuf,
    siblings: Vec<PathBuf>,
}

impl Candidate {
    fn fits(&self, max: usize) -> bool {
        std::iter::once(&self.agent)
            .chain(&self.siblings)
            .all(|p| p.as_os_str().len() <= max)
    }
}

fn candidates(home: &Path, name: &str) -> [Candidate; 3] {
    let digest = name_digest_hex(name);
    let canonical_dir = home.join("run").join("sandboxes").join(&digest[..24]);
    [
        Candidate {
            agent: canonical_dir.join("agent.sock"),
            siblings: vec![canonical_dir.join("control.sock")],
        },
        Candidate {
            agent: home
                .join("run")
                .join("agent")
                .join(format!("{}.sock", &digest[..32])),
            siblings: Vec::new(),
        },
        Candidate {
            agent: home
                .join("sandboxes")
                .join(name)
                .join("runtime")
                .join("agent.sock"),
            siblings: Vec::new(),
        },
    ]
}

/// `$MSB_HOME`, or `~/.microsandbox` when it is unset or empty.
fn msb_home() -> Result<PathBuf> {
    let non_empty = |v: Option<OsString>| v.filter(|v| !v.is_empty());
    if let Some(home) = non_empty(std::env::var_os("MSB_HOME")) {
        return Ok(PathBuf::from(home));
    }
    match non_empty(std::env::var_os("HOME")) {
        Some(h) => Ok(PathBuf::from(h).join(".microsandbox")),
        None => Err(Error::InvalidArgument(
            "neither MSB_HOME nor HOME is set".into(),
        )),
    }
}

fn check_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\0'])
        || name.len() > MAX_NAME_LEN;
    if bad {
        return Err(Error::InvalidArgument(format!(
            "{name:?} is not a sandbox name (1 to {MAX_NAME_LEN} bytes, no '/' or NUL, not . or ..)"
        )));
    }
    Ok(())
}

/// Resolves `name` under `home` (see the module documentation); `exists`
/// says whether a path is there.
fn resolve_in(home: &Path, name: &str, exists: impl Fn(&Path) -> bool) -> Result<PathBuf> {
    check_name(name)?;
    let all = candidates(home, name);
    if let Some(found) = all.iter().find(|c| exists(&c.agent)) {
        return Ok(found.agent.clone());
    }
    let max = max_socket_path_len();
    match all.into_iter().find(|c| c.fits(max)) {
        Some(c) => Ok(c.agent),
        None => Err(Error::InvalidArgument(format!(
            "no socket path of sandbox {name:?} under {} fits in the {max} bytes of a Unix socket address",
            home.display()
        ))),
    }
}

/// The relay socket of the sandbox `name`, resolved as the module
/// documentation says, under `$MSB_HOME` (default `~/.microsandbox`).
pub fn sandbox_socket_path(name: &str) -> Result<PathBuf> {
    // `symlink_metadata`: a socket, or a link to one, counts as present
    // even when the link dangles; connecting then reports why.
    resolve_in(&msb_home()?, name, |p| p.symlink_metadata().is_ok())
}

/// The path's bytes followed by one NUL, for handing to C.
pub fn path_to_nul_terminated(path: &Path) -> Vec<u8> {
    let mut v = path.as_os_str().to_os_string().into_vec();
    v.push(0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_the_published_example() {
        // The example upstream's own test uses for the name "worker".
        let d = name_digest_hex("worker");
        assert_eq!(&d[..24], "87eba76e7f3164534045ba92");
        assert_eq!(&d[..32], "87eba76e7f3164534045ba922e7770fb");
        assert_eq!(d.len(), 64);
        // FIPS 180-2 test vector, so the digest itself is checked too.
        assert_eq!(
            name_digest_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn resolve_with(present: &[&str]) -> PathBuf {
        let home = Path::new("/h");
        resolve_in(home, "worker", |p| {
            present.iter().any(|q| p == home.join(q))
        })
        .unwrap()
    }

    const CANONICAL: &str = "run/sandboxes/87eba76e7f3164534045ba92/agent.sock";
    const FLAT: &str = "run/agent/87eba76e7f3164534045ba922e7770fb.sock";
    const LEGACY: &str = "sandboxes/worker/runtime/agent.sock";

    #[test]
    fn the_first_existing_layout_wins() {
        let h = Path::new("/h");
        assert_eq!(resolve_with(&[CANONICAL, FLAT, LEGACY]), h.join(CANONICAL));
        assert_eq!(resolve_with(&[FLAT, LEGACY]), h.join(FLAT));
        assert_eq!(resolve_with(&[LEGACY]), h.join(LEGACY));
        assert_eq!(resolve_with(&[LEGACY, CANONICAL]), h.join(CANONICAL));
    }

    #[test]
    fn with_nothing_present_the_canonical_layout_is_chosen() {
        assert_eq!(resolve_with(&[]), Path::new("/h").join(CANONICAL));
    }

    #[test]
    fn layouts_too_long_for_a_socket_address_are_skipped() {
        let max = max_socket_path_len();
        let tail_canonical = "/run/sandboxes/87eba76e7f3164534045ba92/control.sock".len();
        let tail_flat = "/run/agent/87eba76e7f3164534045ba922e7770fb.sock".len();
        // Long enough that the canonical paths overflow, short enough for the flat one.
        let home = PathBuf::from(format!("/{}", "h".repeat(max - tail_canonical)));
        assert!(home.as_os_str().len() + tail_flat <= max);
        let got = resolve_in(&home, "worker", |_| false).unwrap();
        assert_eq!(got, home.join(FLAT));

        // Nothing fits: the error says why. A present path still wins.
        let huge = PathBuf::from(format!("/{}", "h".repeat(max)));
        let e = resolve_in(&huge, "worker", |_| false).unwrap_err();
        assert!(e.to_string().contains("Unix socket address"), "{e}");
        let present = huge.join(LEGACY);
        assert_eq!(
            resolve_in(&huge, "worker", |p| p == present).unwrap(),
            present
        );
    }

    #[test]
    fn names_that_cannot_be_a_directory_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(
                matches!(
                    resolve_in(Path::new("/h"), bad, |_| false),
                    Err(Error::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
        let long = "n".repeat(MAX_NAME_LEN + 1);
        assert!(resolve_in(Path::new("/h"), &long, |_| false).is_err());
        let longest = "n".repeat(MAX_NAME_LEN);
        assert!(resolve_in(Path::new("/h"), &longest, |_| false).is_ok());
    }

    #[test]
    fn nul_terminated_form_ends_in_one_nul() {
        let v = path_to_nul_terminated(Path::new("/a/b.sock"));
        assert_eq!(v, b"/a/b.sock\0");
    }
}
