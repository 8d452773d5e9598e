//! The guest's errno, recovered from the text of a failure. agentd reports
//! filesystem and socket failures as text only, ending with the Rust
//! standard library's rendering of the OS error: `"open: No such file or
//! directory (os error 2)"`. That suffix is the one structured piece of the
//! message, so it is read back here, in one place, for every caller.

/// Guest errno values the library gives a meaning of its own. The guest is
/// always Linux, so these are Linux's numbers whatever the host is.
pub mod linux {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EACCES: i32 = 13;
    pub const EEXIST: i32 = 17;
}

const MARKER: &str = "(os error ";

/// The errno at the end of a guest failure message, if it carries one: the
/// last `(os error N)` in the text, with N a positive decimal number.
pub fn guest_errno(message: &str) -> Option<i32> {
    let start = message.rfind(MARKER)? + MARKER.len();
    let rest = &message[start..];
    let digits = rest.split(')').next()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || !rest.contains(')') {
        return None;
    }
    digits.parse::<i32>().ok().filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_os_error_suffix() {
        assert_eq!(
            guest_errno("open: No such file or directory (os error 2)"),
            Some(linux::ENOENT)
        );
        assert_eq!(guest_errno("mkdir /x: File exists (os error 17)"), Some(17));
        // The last one counts: a path may itself contain the marker.
        assert_eq!(
            guest_errno("/tmp/(os error 5)/f: Permission denied (os error 13)"),
            Some(13)
        );
    }

    #[test]
    fn anything_else_has_no_errno() {
        for text in [
            "",
            "unknown write session: 7",
            "(os error )",
            "(os error 2",
            "(os error -2)",
            "(os error 0)",
            "(os error 2x)",
            "(os error 99999999999)",
        ] {
            assert_eq!(guest_errno(text), None, "{text:?}");
        }
    }
}
