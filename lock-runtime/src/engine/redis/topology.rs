//! Which Redis deployment a locker talks to, from its URL (or the builder's parts): one server,
//! a Cluster, or a primary found through Sentinel.
//!
//! URL forms (user, password and the `s` of TLS as in `redis://`):
//! - `redis://[user:password@]host[:port][/db]`, `rediss://...`, `redis+unix:///path`: one server;
//! - `redis+cluster://[user:password@]h1:p1,h2:p2[/]` (`rediss+cluster://` for TLS): any reachable
//!   nodes of a Cluster; the client learns the rest;
//! - `redis+sentinel://[user:password@]s1:26379,s2:26379/<master name>[/db]`
//!   (`rediss+sentinel://`): the sentinels watching the primary `<master name>`; the user and
//!   password are the primary's, `?sentinel_username=..&sentinel_password=..` the sentinels'.

use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{IntoConnectionInfo, TlsMode};

/// The default port of a Cluster node given without one.
const DEFAULT_NODE_PORT: u16 = 6379;
/// The default port of a sentinel given without one.
const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// A deployment, ready to connect to.
pub(crate) enum Topology {
    Single(redis::Client),
    Cluster(ClusterNodes),
    Sentinel(SentinelClients),
}

/// Makes a client that asks the sentinels; a new one for each question, so that no connection
/// to a sentinel stays open between failovers (nor after the locker is closed).
pub(crate) type SentinelClients = Box<dyn Fn() -> redis::RedisResult<SentinelClient> + Send + Sync>;

/// What a Cluster connection is made from: the seed nodes (their URLs carry the credentials and
/// TLS) and a trusted root certificate, if one was given.
#[derive(Clone)]
pub(crate) struct ClusterNodes {
    pub(crate) urls: Vec<String>,
    pub(crate) root_certificate: Option<Vec<u8>>,
}

impl ClusterNodes {
    /// A client for these nodes; `resp3` with a receiver for pushes (sharded pub/sub messages).
    pub(crate) fn client(
        &self,
        push_sender: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
        connect_timeout: std::time::Duration,
        response_timeout: std::time::Duration,
    ) -> redis::RedisResult<redis::cluster::ClusterClient> {
        let mut builder = redis::cluster::ClusterClientBuilder::new(self.urls.clone())
            .connection_timeout(connect_timeout)
            .response_timeout(response_timeout);
        if let Some(sender) = push_sender {
            builder = builder
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(sender);
        }
        #[cfg(not(feature = "tls"))]
        let _ = &self.root_certificate;
        #[cfg(feature = "tls")]
        if let Some(root_cert) = &self.root_certificate {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert.clone()),
            });
        }
        builder.build()
    }
}

/// The deployment `url` names; the error says what is wrong without echoing the URL (it may carry
/// a password).
pub(crate) fn from_url(url: &str, root_certificate: Option<Vec<u8>>) -> Result<Topology, String> {
    const MULTI_HOST: [&str; 4] = [
        "redis+cluster://",
        "rediss+cluster://",
        "redis+sentinel://",
        "rediss+sentinel://",
    ];
    let Some((rest, scheme)) = MULTI_HOST
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme).map(|rest| (rest, *scheme)))
    else {
        return single(url, root_certificate).map(Topology::Single);
    };
    let tls = scheme.starts_with("rediss");
    let parts = split(rest)?;
    if scheme.contains("cluster") {
        cluster(&parts, tls, root_certificate)
    } else {
        sentinel(&parts, tls, root_certificate)
    }
}

/// A Cluster given by its seed nodes (`host:port` each), for the builder.
pub(crate) fn cluster_from_nodes(
    nodes: &[String],
    root_certificate: Option<Vec<u8>>,
) -> Result<Topology, String> {
    let parts = Parts {
        userinfo: None,
        hosts: nodes.iter().map(|n| n.trim().to_owned()).collect(),
        path: Vec::new(),
        query: None,
    };
    cluster(&parts, false, root_certificate)
}

/// A primary found through `sentinels` (`host:port` each), for the builder.
pub(crate) fn sentinel_from_parts(
    sentinels: &[String],
    master: &str,
    root_certificate: Option<Vec<u8>>,
) -> Result<Topology, String> {
    let parts = Parts {
        userinfo: None,
        hosts: sentinels.iter().map(|n| n.trim().to_owned()).collect(),
        path: vec![master.to_owned()],
        query: None,
    };
    sentinel(&parts, false, root_certificate)
}

fn single(url: &str, root_certificate: Option<Vec<u8>>) -> Result<redis::Client, String> {
    #[cfg(feature = "tls")]
    {
        if url.starts_with("rediss://") {
            install_crypto_provider();
        }
        let opened = match root_certificate {
            Some(root_cert) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            ),
            None => redis::Client::open(url),
        };
        opened.map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = root_certificate;
        redis::Client::open(url).map_err(|e| e.to_string())
    }
}

/// rustls needs one process-wide crypto provider; ours is ring. One the application installed
/// already is kept.
#[cfg(feature = "tls")]
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A multi-host URL after its scheme: `[userinfo@]host[:port],...[/path...][?query]`.
struct Parts {
    userinfo: Option<String>,
    hosts: Vec<String>,
    /// The non-empty path segments.
    path: Vec<String>,
    query: Option<String>,
}

fn split(rest: &str) -> Result<Parts, String> {
    // The user info ends at the last `@`: a password with an unencoded `/`, `?` or `@` then
    // stays in it, and is never taken for a host, a path or a parameter (which errors name).
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => (Some(userinfo.to_owned()), rest),
        None => (None, rest),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query.to_owned())),
        None => (rest, None),
    };
    let (hosts, path) = match rest.split_once('/') {
        Some((hosts, path)) => (hosts, path),
        None => (rest, ""),
    };
    Ok(Parts {
        userinfo,
        hosts: hosts.split(',').map(str::to_owned).collect(),
        path: path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        query,
    })
}

/// `redis[s]://[userinfo@]host:port/` for one of the hosts, port defaulted.
fn node_url(
    host: &str,
    default_port: u16,
    tls: bool,
    userinfo: Option<&str>,
) -> Result<String, String> {
    if host.is_empty() {
        return Err("a host in the list is empty (hosts are separated by single commas)".into());
    }
    let has_port = match host.rfind(']') {
        // [IPv6]:port
        Some(end) => host[end..].contains(':'),
        None => host.contains(':'),
    };
    let host = if has_port {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    };
    let scheme = if tls { "rediss" } else { "redis" };
    Ok(match userinfo {
        Some(userinfo) => format!("{scheme}://{userinfo}@{host}/"),
        None => format!("{scheme}://{host}/"),
    })
}

fn cluster(
    parts: &Parts,
    tls: bool,
    root_certificate: Option<Vec<u8>>,
) -> Result<Topology, String> {
    if parts.hosts.iter().all(|h| h.is_empty()) {
        return Err(
            "a redis+cluster URL needs at least one node: redis+cluster://host:port,host:port"
                .into(),
        );
    }
    match parts.path.as_slice() {
        [] => {}
        [db] if db == "0" => {}
        _ => {
            return Err(
                "a Redis Cluster has only database 0: leave the path of a redis+cluster URL empty"
                    .into(),
            );
        }
    }
    if parts.query.as_deref().is_some_and(|q| !q.is_empty()) {
        return Err("a redis+cluster URL takes no query parameters".into());
    }
    let urls = parts
        .hosts
        .iter()
        .map(|host| {
            let url = node_url(host, DEFAULT_NODE_PORT, tls, parts.userinfo.as_deref())?;
            // Checked here, so that a bad host is named at build rather than at connect.
            url.as_str()
                .into_connection_info()
                .map_err(|e| format!("node `{host}`: {e}"))?;
            Ok(url)
        })
        .collect::<Result<Vec<_>, String>>()?;
    #[cfg(feature = "tls")]
    if tls {
        install_crypto_provider();
    }
    let nodes = ClusterNodes {
        urls,
        root_certificate,
    };
    // Checks the rest of the settings now, without connecting.
    nodes
        .client(
            None,
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(1),
        )
        .map_err(|e| e.to_string())?;
    Ok(Topology::Cluster(nodes))
}

fn sentinel(
    parts: &Parts,
    tls: bool,
    root_certificate: Option<Vec<u8>>,
) -> Result<Topology, String> {
    let (master, db) = match parts.path.as_slice() {
        [master] => (master.clone(), None),
        [master, db] => {
            let db: i64 = db
                .parse()
                .map_err(|_| format!("database `{db}` in a redis+sentinel URL is not a number"))?;
            (master.clone(), Some(db))
        }
        _ => {
            return Err(
                "a redis+sentinel URL names the primary after the sentinels: \
                 redis+sentinel://host:26379,host:26379/<master name>[/db]"
                    .into(),
            );
        }
    };
    let mut addrs = Vec::new();
    for host in &parts.hosts {
        let url = node_url(host, DEFAULT_SENTINEL_PORT, tls, None)?;
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("sentinel `{host}`: {e}"))?;
        addrs.push(info.addr().clone());
    }
    let mut settings = SentinelSettings {
        addrs,
        master,
        db,
        ..SentinelSettings::default()
    };
    if let Some(userinfo) = &parts.userinfo {
        // Decoded by the client library's own URL parser.
        let info = format!("redis://{userinfo}@localhost/")
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("the user or password: {e}"))?;
        let redis = info.redis_settings();
        settings.username = redis.username().map(str::to_owned);
        settings.password = redis.password().map(str::to_owned);
    }
    if let Some(query) = &parts.query {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "sentinel_username" => settings.sentinel_username = Some(decode(value)?),
                "sentinel_password" => settings.sentinel_password = Some(decode(value)?),
                // Not named: a mistyped URL can put a secret here.
                _ => {
                    return Err("unknown parameter in a redis+sentinel URL (known: \
                                sentinel_username, sentinel_password)"
                        .into());
                }
            }
        }
    }
    if tls {
        #[cfg(feature = "tls")]
        {
            install_crypto_provider();
            settings.tls = true;
            settings.root_certificate = root_certificate;
        }
        #[cfg(not(feature = "tls"))]
        return Err("rediss+sentinel URLs need the `tls` feature".into());
    }
    #[cfg(not(feature = "tls"))]
    let _ = root_certificate;
    // Checked now, so that a bad setting is named at build rather than at connect.
    settings.client().map_err(|e| e.to_string())?;
    Ok(Topology::Sentinel(Box::new(move || settings.client())))
}

/// What a Sentinel client is made from.
#[derive(Default)]
struct SentinelSettings {
    addrs: Vec<redis::ConnectionAddr>,
    master: String,
    db: Option<i64>,
    username: Option<String>,
    password: Option<String>,
    sentinel_username: Option<String>,
    sentinel_password: Option<String>,
    tls: bool,
    root_certificate: Option<Vec<u8>>,
}

impl SentinelSettings {
    fn client(&self) -> redis::RedisResult<SentinelClient> {
        let mut builder = SentinelClientBuilder::new(
            self.addrs.iter().cloned(),
            &self.master,
            SentinelServerType::Master,
        )?;
        if let Some(user) = &self.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(db) = self.db {
            builder = builder.set_client_to_redis_db(db);
        }
        if let Some(user) = &self.sentinel_username {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = &self.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if self.tls {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            #[cfg(feature = "tls")]
            if let Some(root_cert) = &self.root_certificate {
                let certs = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert.clone()),
                };
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        builder.build()
    }
}

/// Percent-decoding of a query value (`+` stays a `+`), by the client library's URL parser, as
/// for the password in the user info.
fn decode(value: &str) -> Result<String, String> {
    let info = format!("redis://:{value}@localhost/")
        .as_str()
        .into_connection_info()
        .map_err(|_| "a sentinel_username or sentinel_password that is not percent-encoded")?;
    Ok(info
        .redis_settings()
        .password()
        .unwrap_or_default()
        .to_owned())
}

/// A `[user:password@]host:port` node as it may be logged.
pub(crate) fn redact_node(node: &str, redacted: &str) -> String {
    match node.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:{redacted}@{host}"),
            None => node.to_owned(),
        },
        None => node.to_owned(),
    }
}

/// The URL as it may be logged: the password in the user info, and the `pass` and
/// `sentinel_password` parameters, replaced by `redacted`. Multi-host URLs, which are not URLs
/// to the `url` crate, are done by hand.
pub(crate) fn redact_multi_host(url: &str, redacted: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.contains('+') || scheme == "redis+unix" {
        return None;
    }
    let mut out = format!("{scheme}://");
    // As `split` reads it: the user info ends at the last `@`.
    let rest = match rest.rsplit_once('@') {
        Some((userinfo, rest)) => {
            match userinfo.split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:{redacted}@")),
                None => out.push_str(&format!("{userinfo}@")),
            }
            rest
        }
        None => rest,
    };
    let (authority, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (hosts, path) = match authority.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (authority, None),
    };
    out.push_str(hosts);
    if let Some(path) = path {
        out.push('/');
        out.push_str(path);
    }
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if name.contains("pass") => format!("{name}={redacted}"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_become_node_urls() {
        let Ok(Topology::Cluster(nodes)) = from_url(
            "redis+cluster://u:p%40ss@10.0.0.1:7000,10.0.0.2,[::1]:7002/",
            None,
        ) else {
            panic!("not a cluster");
        };
        assert_eq!(
            nodes.urls,
            [
                "redis://u:p%40ss@10.0.0.1:7000/",
                "redis://u:p%40ss@10.0.0.2:6379/",
                "redis://u:p%40ss@[::1]:7002/"
            ]
        );
    }

    #[test]
    fn bad_multi_host_urls_say_why() {
        let err = |url| match from_url(url, None) {
            Err(e) => e,
            Ok(_) => panic!("{url} accepted"),
        };
        assert!(err("redis+cluster://a:1,,b:2").contains("empty"));
        assert!(err("redis+cluster://a:1/3").contains("database 0"));
        assert!(err("redis+sentinel://a:26379").contains("<master name>"));
        assert!(err("redis+sentinel://a:26379/m/x").contains("not a number"));
        assert!(err("redis+sentinel://a/m?nope=1").contains("unknown parameter"));
        assert!(!err("redis+cluster://u:secret@a:1/3").contains("secret"));
    }

    #[test]
    fn sentinel_urls_parse() {
        assert!(matches!(
            from_url(
                "redis+sentinel://:pw@s1,s2:26380/mymaster/2?sentinel_password=x",
                None
            ),
            Ok(Topology::Sentinel(_))
        ));
    }

    #[test]
    fn query_values_are_percent_decoded_with_plus_kept() {
        assert_eq!(decode("a+b%2Bc%40d").as_deref(), Ok("a+b+c@d"));
    }

    #[test]
    fn multi_host_urls_are_redacted() {
        assert_eq!(
            redact_multi_host("redis+cluster://u:secret@a:1,b:2/", "***").as_deref(),
            Some("redis+cluster://u:***@a:1,b:2/")
        );
        assert_eq!(
            redact_multi_host("redis+sentinel://a,b/m?sentinel_password=s&x=1", "***").as_deref(),
            Some("redis+sentinel://a,b/m?sentinel_password=***&x=1")
        );
        assert_eq!(redact_multi_host("redis://u:p@a/", "***"), None);
        // Unencoded `/`, `?` in a password stay in it.
        for url in [
            "redis+cluster://u:pa/ss@h:1,h2:2/",
            "redis+cluster://:p?w@h:1",
        ] {
            let shown = redact_multi_host(url, "***").unwrap();
            assert!(
                !shown.contains("pa/ss") && !shown.contains("p?w"),
                "{shown}"
            );
        }
        match from_url("redis+sentinel://:p?w@s1/m", None) {
            Ok(_) => {}
            Err(e) => assert!(!e.contains("p?w") && !e.contains("w@"), "{e}"),
        }
        match from_url("redis+sentinel://s1/m?x=secret", None) {
            Ok(_) => panic!("an unknown parameter was accepted"),
            Err(e) => assert!(!e.contains("secret") && !e.contains('x'), "{e}"),
        }
    }
}
