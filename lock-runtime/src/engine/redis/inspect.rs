//! For operators: what a lock records, and deleting it whoever holds it. Off every lock path.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{RedisEngine, eval, unexpected};
use crate::error::BackendError;
use crate::lock_info::LockInfo;

static INSPECT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("inspect.lua")));
static FORCE_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("force_release.lua")));

/// Both scripts' reply: a code (1 a lock, 0 free, -1 not a lock), the lock's value, its PTTL.
type Reply = (i64, String, i64);

impl RedisEngine {
    pub(crate) async fn inspect(&self, key: &str) -> Result<Option<LockInfo>, BackendError> {
        let lock = self.lock_key(key);
        let cmd = eval(&INSPECT, &lock);
        let (reply, _): (Reply, _) = self.call(&INSPECT, &lock, cmd, None, "inspecting").await?;
        read(lock, reply, "inspect")
    }

    pub(crate) async fn force_release(&self, key: &str) -> Result<Option<LockInfo>, BackendError> {
        let lock = self.lock_key(key);
        let channel = format!("{lock}:released");
        let mut cmd = eval(&FORCE_RELEASE, &lock);
        cmd.arg(&channel).arg(self.publish());
        let (reply, _): (Reply, _) = self
            .call(&FORCE_RELEASE, &lock, cmd, None, "force-releasing")
            .await?;
        read(lock, reply, "force-release")
    }
}

fn read(lock: String, reply: Reply, script: &str) -> Result<Option<LockInfo>, BackendError> {
    match reply {
        (1, value, pttl) if pttl >= 0 => match parse(&value) {
            Some((fence, holder)) => Ok(Some(LockInfo {
                holder: holder.map(str::to_owned),
                lease_left: Duration::from_millis(pttl as u64),
                fencing_token: fence,
            })),
            None => Err(BackendError::unexpected_reply(format!(
                "{script} script returned {value:?}, which is not a lock's value"
            ))),
        },
        (0, _, -2) => Ok(None),
        (-1, _, _) => Err(BackendError::not_a_lock(lock)),
        (code, _, pttl) => Err(unexpected(script, &[code, pttl])),
    }
}

/// The fencing number and the holder label of a lock's value: `<token>:<fence>[:<label>]`, where
/// the label is everything after the second `:` (so it may hold `:` itself); a bare token (an
/// earlier version's lock) has neither, its number is 0.
fn parse(value: &str) -> Option<(u64, Option<&str>)> {
    let Some((token, rest)) = value.split_once(':') else {
        return value
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
            .then_some((0, None));
    };
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (fence, label) = match rest.split_once(':') {
        Some((fence, label)) => (fence, Some(label)),
        None => (rest, None),
    };
    Some((fence.parse().ok()?, label))
}

#[cfg(test)]
mod tests {
    use super::parse;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_value_gives_its_fence_and_the_whole_rest_as_the_label() {
        assert_eq!(
            parse(&format!("{TOKEN}:1700000000000001:web-1:4242")),
            Some((1_700_000_000_000_001, Some("web-1:4242")))
        );
        assert_eq!(parse(&format!("{TOKEN}:7:")), Some((7, Some(""))));
    }

    #[test]
    fn the_earlier_forms_have_no_label() {
        assert_eq!(parse(&format!("{TOKEN}:7")), Some((7, None)));
        assert_eq!(parse(TOKEN), Some((0, None)));
    }

    #[test]
    fn a_value_not_of_this_shape_is_none() {
        assert_eq!(parse(&format!("{TOKEN}:seven:x")), None);
        assert_eq!(parse("someone:7"), None);
    }
}
