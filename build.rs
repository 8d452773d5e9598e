//! Gives the shared library an ELF soname, so programs linked against it
//! record `libmicrosandbox_agent.so.<abi>` and keep loading the newest
//! compatible build after an upgrade.
//!
//! ABI policy (stated in the README): before 1.0 a minor release may break
//! callers, so the soname carries MAJOR.MINOR (0.1.x -> `.so.0.1`); from 1.0
//! on only additions are allowed within a major version, so it carries MAJOR
//! alone (1.x.y -> `.so.1`). The Makefile installs the matching symlink using
//! the same rule, and scripts/test-install.sh checks the two agree.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");

    // The soname is an ELF notion; other targets (Mach-O's install name,
    // Windows DLL names) are not packaged by the Makefile.
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if !matches!(
        target_os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly"
    ) {
        return;
    }

    let major = env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets CARGO_PKG_VERSION_MAJOR");
    let minor = env::var("CARGO_PKG_VERSION_MINOR").expect("cargo sets CARGO_PKG_VERSION_MINOR");
    let abi = if major == "0" {
        format!("0.{minor}")
    } else {
        major
    };
    // "microsandbox_agent" is the [lib] name in Cargo.toml.
    let soname = format!("libmicrosandbox_agent.so.{abi}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    link_soname_in_build_tree(&soname);
}

/// Programs linked against the build tree (`-Ltarget/release`) record the
/// soname, so the loader looks for that file name: put a symlink of that
/// name beside the library, so `LD_LIBRARY_PATH=target/release` works
/// without installing. OUT_DIR is `<profile dir>/build/<package>-<hash>/out`.
fn link_soname_in_build_tree(soname: &str) {
    let Ok(out_dir) = env::var("OUT_DIR") else {
        return;
    };
    let Some(profile_dir) = std::path::Path::new(&out_dir).ancestors().nth(3) else {
        return;
    };
    let link = profile_dir.join(soname);
    if std::fs::symlink_metadata(&link).is_err() {
        // Best effort: a read-only or unusual target dir only loses the
        // convenience, never the build.
        // The build script runs on the host; only a Unix host has symlink().
        #[cfg(unix)]
        let _ = std::os::unix::fs::symlink("libmicrosandbox_agent.so", &link);
        #[cfg(not(unix))]
        let _ = link;
    }
}
