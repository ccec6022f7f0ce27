//! The holder label: who holds a lock, in words an operator can act on (`host:pid` by default),
//! recorded with the lock and shown by [`Locker::inspect`](crate::Locker::inspect).

/// The longest holder label accepted, in bytes. The label travels with every acquisition, so
/// it stays short: a host name (at most 253 bytes in DNS) and a process id fit.
pub const MAX_HOLDER_LABEL_LEN: usize = 256;

/// `host:pid` of this process, cut to [`MAX_HOLDER_LABEL_LEN`]. A host name that is not UTF-8
/// is shown with replacement characters: the label is for reading, not for lookups.
pub fn default_holder_label() -> String {
    let host = gethostname::gethostname();
    let pid = std::process::id().to_string();
    let mut host = host.to_string_lossy().into_owned();
    // Room for ":" and the pid; cut the host name at a character boundary.
    let room = MAX_HOLDER_LABEL_LEN.saturating_sub(pid.len() + 1);
    if host.len() > room {
        let mut end = room;
        while !host.is_char_boundary(end) {
            end -= 1;
        }
        host.truncate(end);
    }
    format!("{host}:{pid}")
}

/// Why `label` cannot be a holder label, if it cannot.
pub(crate) fn check_holder_label(label: &str) -> Result<(), String> {
    if label.len() > MAX_HOLDER_LABEL_LEN {
        return Err(format!(
            "holder_label is {} bytes long, more than {MAX_HOLDER_LABEL_LEN}; name the host and \
             process briefly (the default is host:pid)",
            label.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_label_is_host_colon_pid_within_the_cap() {
        let label = default_holder_label();
        let (host, pid) = label.rsplit_once(':').expect("host:pid");
        assert!(!host.is_empty(), "{label}");
        assert_eq!(pid, std::process::id().to_string());
        assert!(check_holder_label(&label).is_ok());
    }

    #[test]
    fn a_label_over_the_cap_is_refused_and_any_text_under_it_is_not() {
        assert!(check_holder_label("worker: 3 (eu-west)").is_ok());
        assert!(check_holder_label(&"x".repeat(MAX_HOLDER_LABEL_LEN)).is_ok());
        let long = check_holder_label(&"x".repeat(MAX_HOLDER_LABEL_LEN + 1));
        assert!(long.is_err_and(|reason| reason.contains("256")));
    }
}
