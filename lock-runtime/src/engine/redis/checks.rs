//! What connecting checks: that the server lets this client do everything a lock needs (a
//! connection for commands and one for wake-ups, the scripts, the wake-up channels), said at once
//! and in the server's own words; and that its eviction policy cannot silently drop locks.

use std::time::Duration;

use redis::ConnectionAddr;
use redis::aio::PubSub;
use tokio::io::AsyncReadExt;

use super::connection::Conn;
use super::shard_waiters::Sharded;
use super::waiters::{Initial, Source, SubscriberSettings};
use crate::error::BackendError;

/// How long a server that refuses a new connection takes to say why: it writes its reason as
/// soon as it accepts, so this only covers a loaded machine's scheduling.
const REFUSAL_WAIT: Duration = Duration::from_millis(500);
/// The lock name the connect probes use: a release of it changes nothing, as nobody holds it.
pub(super) const PROBE_KEY: &str = "__distlock_connect_probe__";

/// The text for a failed connection attempt: the server's own reason when it gave one.
///
/// A server that refuses clients (`maxclients`) writes `-ERR max number of clients reached` and
/// closes; the client library, busy writing its hello, reports only "broken pipe" or "connection
/// reset". So a network-level failure is followed by one more connection that only listens.
pub(super) async fn connect_error(client: &redis::Client, error: redis::RedisError) -> String {
    if error.code().is_none()
        && let Some(reason) = refusal(client).await
    {
        return refused_connection_text(&reason);
    }
    error.to_string()
}

/// The same, as the error `connect` returns.
pub(super) async fn connection_refused(
    client: &redis::Client,
    what: &str,
    error: redis::RedisError,
) -> BackendError {
    if error.code().is_none()
        && let Some(reason) = refusal(client).await
    {
        return BackendError::refused(
            format!(
                "the server refused the {what}: {}",
                refused_connection_text(&reason)
            ),
            Some(BackendError::redis(error)),
        );
    }
    BackendError::redis(error)
}

fn refused_connection_text(reason: &str) -> String {
    if reason.contains("max number of clients") {
        format!(
            "{reason} (each locker needs two connections, one for commands and one for \
             wake-ups: raise the server's `maxclients`, or share one locker per process)"
        )
    } else {
        reason.to_owned()
    }
}

/// What the server says to a connection that has not asked anything yet, if it says something
/// at once (an error line); `None` when it waits politely, or over TLS, where it would speak only
/// after a handshake.
async fn refusal(client: &redis::Client) -> Option<String> {
    let listen = async {
        let mut said = [0u8; 256];
        let n = match client.get_connection_info().addr() {
            ConnectionAddr::Tcp(host, port) => {
                let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .ok()?;
                stream.read(&mut said).await.ok()?
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => {
                let mut stream = tokio::net::UnixStream::connect(path).await.ok()?;
                stream.read(&mut said).await.ok()?
            }
            _ => return None,
        };
        let said = std::str::from_utf8(&said[..n]).ok()?;
        Some(said.strip_prefix('-')?.trim_end().to_owned())
    };
    tokio::time::timeout(REFUSAL_WAIT, listen)
        .await
        .ok()
        .flatten()
}

/// Opens the wake-up subscriber connection and checks that the user may subscribe to and
/// publish on (the release script does, under the user's rights) the locks' channels: SUBSCRIBE
/// and PUBLISH, or on a Cluster SSUBSCRIBE and SPUBLISH.
pub(super) async fn open_subscriber(
    settings: &SubscriberSettings,
    conn: &mut Conn,
    prefix: &str,
) -> Result<Initial, BackendError> {
    let probe = format!("{prefix}{{{PROBE_KEY}}}:released");
    let cluster = matches!(settings.source, Source::Cluster(_));
    let publish = super::publish_command(cluster);
    let (subscribe, unsubscribe) = if cluster {
        ("ssubscribe", "sunsubscribe")
    } else {
        ("subscribe", "unsubscribe")
    };
    let channels = |e: redis::RedisError| {
        let verbs = subscribe.to_uppercase();
        let publish_verb = publish.to_owned();
        refused(
            BackendError::redis(e),
            &format!(
                "use the locks' wake-up channels ({verbs} and {publish_verb} on channels `{prefix}*`)"
            ),
            &format!(
                "grant them with `ACL SETUSER <user> +{subscribe} +{unsubscribe} +{} &{prefix}*`",
                publish.to_lowercase()
            ),
        )
    };
    let initial = match &settings.source {
        Source::Cluster(_) => {
            let mut sharded = Sharded::connect(settings)
                .await
                .map_err(BackendError::redis)?;
            sharded.probe(&probe).await.map_err(channels)?;
            Initial::Sharded(sharded)
        }
        Source::Single(client) => Initial::PubSub(plain_probe(client, &probe, &channels).await?),
        Source::Sentinel(source) => {
            let client = source.primary().await?;
            Initial::PubSub(plain_probe(&client, &probe, &channels).await?)
        }
    };
    // Nobody listens to the probe's channel.
    let _: i64 = redis::cmd(publish)
        .arg(&probe)
        .arg("0")
        .query_async(conn)
        .await
        .map_err(channels)?;
    Ok(initial)
}

async fn plain_probe(
    client: &redis::Client,
    probe: &str,
    channels: &impl Fn(redis::RedisError) -> BackendError,
) -> Result<PubSub, BackendError> {
    let mut pubsub = match client.get_async_pubsub().await {
        Ok(pubsub) => pubsub,
        Err(e) => return Err(connection_refused(client, "wake-up subscriber connection", e).await),
    };
    pubsub.subscribe(probe).await.map_err(channels)?;
    pubsub.unsubscribe(probe).await.map_err(channels)?;
    Ok(pubsub)
}

/// With replica acknowledgement asked for: checks that the user may run what it sends (WAIT and
/// INFO replication), so that a refusal shows at connect, not as every acquisition failing.
pub(super) async fn check_replica_commands(
    conn: &mut Conn,
    response_timeout: Duration,
) -> Result<(), BackendError> {
    let mut probe = redis::pipe();
    // WAIT for no replica answers at once; its timeout is never reached.
    probe
        .cmd("WAIT")
        .arg(0)
        .arg(1)
        .cmd("INFO")
        .arg("replication");
    let ask = probe.query_async::<(i64, String)>(conn);
    let answer = match tokio::time::timeout(response_timeout, ask).await {
        Ok(answer) => answer.map_err(BackendError::redis),
        Err(_) => Err(BackendError::timeout(response_timeout, "checking WAIT")),
    };
    answer.map(drop).map_err(|error| {
        refused(
            error,
            "wait for replica acknowledgements (WAIT, INFO replication), which `replica_acks` needs",
            "grant them with `ACL SETUSER <user> +wait +info`",
        )
    })
}

/// A refusal to load or run the lock scripts, which touch the keys under `prefix`.
pub(super) fn scripts_refused(error: BackendError, prefix: &str) -> BackendError {
    refused(
        error,
        &format!("run the lock scripts (SCRIPT LOAD, EVALSHA on keys `{prefix}*`)"),
        &format!("grant it with `ACL SETUSER <user> +script|load +evalsha ~{prefix}*`"),
    )
}

/// `error` as the answer to a check: a refusal by the server (a permission above all) names what
/// the lock needs and how to grant it; anything else (a network fault, a timeout) stays as is.
fn refused(error: BackendError, needs: &str, grant: &str) -> BackendError {
    if error.server_code().is_none() {
        return error;
    }
    let message = format!("the Redis user may not {needs}: the server says \"{error}\"; {grant}");
    BackendError::refused(message, Some(error))
}

/// Logs at WARN when the server's `maxmemory-policy` can evict lock keys. Without the right to
/// ask (CONFIG is often denied to application users), says so at DEBUG and moves on.
pub(super) async fn warn_if_evicting(conn: &mut Conn, response_timeout: Duration) {
    let mut config_get = redis::cmd("CONFIG");
    config_get.arg("GET").arg("maxmemory-policy");
    let ask = config_get.query_async::<Vec<String>>(conn);
    let policy = match tokio::time::timeout(response_timeout, ask).await {
        Ok(Ok(reply)) => match reply.into_iter().nth(1) {
            Some(policy) => policy,
            None => return,
        },
        Ok(Err(error)) => {
            tracing::debug!(%error, "maxmemory-policy not checked: CONFIG GET was refused");
            return;
        }
        Err(_) => {
            tracing::debug!("maxmemory-policy not checked: CONFIG GET got no answer");
            return;
        }
    };
    // volatile-*: lock keys carry a TTL, so they are candidates, often the only ones.
    if policy.starts_with("allkeys-") || policy.starts_with("volatile-") {
        tracing::warn!(
            policy,
            "the Redis maxmemory-policy {policy} can evict lock keys: an evicted lock lets a \
             second holder in while the first still works, and the first learns it only at its \
             next renewal or release; run `CONFIG SET maxmemory-policy noeviction` (and set it \
             in redis.conf), or give locks a server of their own"
        );
    }
}
