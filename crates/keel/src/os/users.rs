//! Pool identities: `user` / `group` looked up in the user database (NSS, through libc's
//! reentrant getpwnam_r / getpwuid_r / getgrnam_r), and the rule that only root may start
//! workers as someone else.
//!
//! The lookups are the `unsafe` of this module: each hands libc a buffer it owns for
//! the duration of the call and copies out the two integers it needs.

use std::ffi::{CString, c_char};
use std::io;

/// A `passwd` entry, reduced to what keel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswdEntry {
    pub uid: u32,
    pub gid: u32,
}

/// errno values getpwnam_r & co. return for "no such entry" besides 0 (see their man page).
fn means_not_found(errno: i32) -> bool {
    matches!(
        errno,
        0 | libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM
    )
}

/// Calls `lookup(buf, len, found)` with growing buffers until it is not ERANGE.
/// Ok(true): found; Ok(false): no such entry.
fn with_buffer(mut lookup: impl FnMut(*mut c_char, usize) -> (i32, bool)) -> io::Result<bool> {
    let mut len = 1024usize;
    loop {
        let mut buf = vec![0 as c_char; len];
        let (rc, found) = lookup(buf.as_mut_ptr(), buf.len());
        match rc {
            0 => return Ok(found),
            libc::ERANGE if len < (1 << 20) => len *= 4,
            errno if means_not_found(errno) => return Ok(false),
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

pub fn user_by_name(name: &str) -> io::Result<Option<PasswdEntry>> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    // SAFETY: an all-zero passwd is a valid value (null pointers, zero ids) for libc to fill.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let found = with_buffer(|buf, len| {
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` holds `len` bytes.
        let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf, len, &mut result) };
        (rc, !result.is_null())
    })?;
    Ok(found.then_some(PasswdEntry {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    }))
}

pub fn user_by_uid(uid: u32) -> io::Result<Option<PasswdEntry>> {
    // SAFETY: as in `user_by_name`.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let found = with_buffer(|buf, len| {
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` holds `len` bytes.
        let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf, len, &mut result) };
        (rc, !result.is_null())
    })?;
    Ok(found.then_some(PasswdEntry {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    }))
}

pub fn group_by_name(name: &str) -> io::Result<Option<u32>> {
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    // SAFETY: an all-zero group is a valid value for libc to fill.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let found = with_buffer(|buf, len| {
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; `buf` holds `len` bytes.
        let rc = unsafe { libc::getgrnam_r(cname.as_ptr(), &mut grp, buf, len, &mut result) };
        (rc, !result.is_null())
    })?;
    Ok(found.then_some(grp.gr_gid))
}

/// A numeric uid or gid as written ("65534"): decimal digits only, and not -1 (u32::MAX),
/// which setresuid/setresgid read as "leave unchanged".
pub fn numeric_id(text: &str) -> Option<Result<u32, String>> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(match text.parse::<u32>() {
        Ok(id) if id != u32::MAX => Ok(id),
        _ => Err(format!("{text} is not a valid id (0 to {})", u32::MAX - 1)),
    })
}

/// What a non-root keel may not do: run workers under another uid or gid. `Err` holds which
/// key is at fault (`"user"` or `"group"`) and the message.
pub fn check_allowed(
    identity: &crate::config::Identity,
    group: Option<&str>,
    euid: u32,
    egid: u32,
) -> Result<(), (&'static str, String)> {
    if euid == 0 {
        return Ok(());
    }
    if identity.uid != euid {
        return Err((
            "user",
            format!(
                "keel runs as uid {euid}, not root, so it cannot start workers as {:?} (uid {}); run keel as root or remove user",
                identity.user, identity.uid
            ),
        ));
    }
    if identity.gid != egid {
        let message = match group {
            Some(group) => format!(
                "keel runs as gid {egid}, not root, so it cannot start workers in group {group:?} (gid {}); run keel as root or remove group",
                identity.gid
            ),
            None => format!(
                "keel runs as gid {egid}, not root, so it cannot start workers in the primary group of {:?} (gid {}); run keel as root, or set group to keel's own gid {egid}",
                identity.user, identity.gid
            ),
        };
        return Err((if group.is_some() { "group" } else { "user" }, message));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Identity;

    fn nobody() -> Identity {
        Identity {
            user: "nobody".into(),
            uid: 65534,
            gid: 65534,
        }
    }

    #[test]
    fn root_may_use_any_identity() {
        assert_eq!(check_allowed(&nobody(), None, 0, 0), Ok(()));
        assert_eq!(check_allowed(&nobody(), Some("nogroup"), 0, 1000), Ok(()));
    }

    #[test]
    fn a_non_root_keel_may_only_use_its_own_ids() {
        let own = Identity {
            user: "me".into(),
            uid: 1000,
            gid: 1000,
        };
        assert_eq!(check_allowed(&own, None, 1000, 1000), Ok(()));
        assert_eq!(
            check_allowed(&nobody(), None, 1000, 1000),
            Err((
                "user",
                "keel runs as uid 1000, not root, so it cannot start workers as \"nobody\" (uid 65534); run keel as root or remove user".into()
            ))
        );
        let (key, message) = check_allowed(&own, Some("nogroup"), 1000, 100).unwrap_err();
        assert_eq!(key, "group");
        assert!(
            message.starts_with("keel runs as gid 100, not root, so it cannot start workers in group \"nogroup\" (gid 1000)"),
            "{message}"
        );
        let (key, message) = check_allowed(&own, None, 1000, 100).unwrap_err();
        assert_eq!(key, "user");
        assert!(message.contains("primary group of \"me\""), "{message}");
    }

    #[test]
    fn numeric_ids() {
        assert_eq!(numeric_id("nobody"), None);
        assert_eq!(numeric_id(""), None);
        assert_eq!(numeric_id("-1"), None);
        assert_eq!(numeric_id("0"), Some(Ok(0)));
        assert_eq!(numeric_id("65534"), Some(Ok(65534)));
        assert!(matches!(numeric_id("4294967295"), Some(Err(_))));
        assert!(matches!(numeric_id("99999999999"), Some(Err(_))));
    }

    #[test]
    fn the_user_database_is_read() {
        let root = user_by_name("root").unwrap().expect("root exists");
        assert_eq!(root, PasswdEntry { uid: 0, gid: 0 });
        assert_eq!(user_by_uid(0).unwrap(), Some(root));
        assert_eq!(group_by_name("root").unwrap(), Some(0));
        assert_eq!(user_by_name("keel-no-such-user").unwrap(), None);
        assert_eq!(group_by_name("keel-no-such-group").unwrap(), None);
        assert_eq!(user_by_name("a\0b").unwrap(), None);
    }
}
