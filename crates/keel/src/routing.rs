//! Bindings and URL prefixes to apps, with HTTP.sys precedence.
//!
//! One [`RouteTable`] serves one listening socket. It reproduces HTTP.sys's "Routing Incoming
//! Requests" (HTTPSYS.md §5): the host buckets are searched in the order strong wildcard `+`,
//! explicit host name, IP-bound weak wildcard, weak wildcard `*`; within a bucket the longest
//! matching path prefix wins, matched on whole segments and case-insensitively; the search stops
//! at the first bucket with any match.
//!
//! Invariant: this module does no I/O and knows nothing of config files, pools or sockets; it
//! maps `(local IP, Host header, path)` to an opaque `T`. [`RouteTable::route`] runs per request,
//! so all normalisation (lower-casing, slash trimming, sorting) happens once in
//! [`RouteTable::new`], and `route` allocates only when the Host header has upper-case letters.

use rustc_hash::FxHashMap;
use std::borrow::Cow;
use std::net::IpAddr;

/// The host part of a binding, one variant per HTTP.sys host category, in precedence order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `+`: every host, searched first.
    Strong,
    /// An explicit host, matched against the Host header without its port. Stored lower-case;
    /// [`RouteTable::new`] lower-cases it (ASCII) and drops a trailing dot anyway. An IPv6
    /// literal is written with its brackets, e.g. `[::1]`, as it appears in the Host header.
    Name(String),
    /// An IP-bound weak wildcard: any host arriving on this local address that no `+` or
    /// explicit-host binding took. IPv4-mapped IPv6 addresses are treated as IPv4.
    Ip(IpAddr),
    /// `*`: the catch-all, searched last.
    Weak,
}

/// One binding: a host pattern, a path prefix, and what the request is routed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteEntry<T> {
    pub host: HostPattern,
    /// The URL path prefix, e.g. `/` or `/app/`. A trailing `/` is optional (`/app` and
    /// `/app/` are the same prefix); a missing leading `/` is added.
    pub path_prefix: String,
    pub target: T,
}

/// Why a request matched no binding. These are the HTTP.sys error-log reasons for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No binding's host pattern matched the request (whatever the path).
    #[error("no binding matches the request's host")]
    Hostname,
    /// A host bucket matched, but none of its path prefixes did.
    #[error("no binding matches the request's URL")]
    Url,
}

impl RouteError {
    /// The HTTP.sys error-log reason phrase: `Hostname` or `URL`.
    pub fn reason(&self) -> &'static str {
        match self {
            RouteError::Hostname => "Hostname",
            RouteError::Url => "URL",
        }
    }
}

/// The routing table of one listening socket. Build once with [`RouteTable::new`], then call
/// [`RouteTable::route`] for every request.
#[derive(Clone, Debug)]
pub struct RouteTable<T> {
    targets: Vec<T>,
    strong: Option<Bucket>,
    // Fx, not SipHash: the keys come from the config, so a client's Host only looks up and
    // cannot build collisions.
    names: FxHashMap<Box<str>, Bucket>,
    ips: FxHashMap<IpAddr, Bucket>,
    weak: Option<Bucket>,
}

/// The prefixes of one host (or wildcard), longest first, so the first match is the best.
#[derive(Clone, Debug, Default)]
struct Bucket {
    prefixes: Vec<Prefix>,
}

#[derive(Clone, Debug)]
struct Prefix {
    /// Lower-cased, without trailing slashes: `/` is stored as the empty string, which
    /// matches every path.
    lower: Box<str>,
    /// Whether `lower` is pure ASCII, which allows a byte-wise comparison.
    ascii: bool,
    /// Index into `RouteTable::targets`.
    target: usize,
}

impl<T> RouteTable<T> {
    /// Builds the table. When two entries have the same host and the same prefix (after
    /// normalisation), the earlier one wins.
    pub fn new(entries: Vec<RouteEntry<T>>) -> Self {
        let mut table = RouteTable {
            targets: Vec::with_capacity(entries.len()),
            strong: None,
            names: FxHashMap::default(),
            ips: FxHashMap::default(),
            weak: None,
        };
        for entry in entries {
            let prefix = Prefix::new(&entry.path_prefix, table.targets.len());
            table.targets.push(entry.target);
            let bucket = match entry.host {
                HostPattern::Strong => table.strong.get_or_insert_with(Bucket::default),
                HostPattern::Name(name) => {
                    table.names.entry(normalize_name(&name).into()).or_default()
                }
                HostPattern::Ip(ip) => table.ips.entry(ip.to_canonical()).or_default(),
                HostPattern::Weak => table.weak.get_or_insert_with(Bucket::default),
            };
            bucket.prefixes.push(prefix);
        }
        let buckets = table.strong.iter_mut().chain(table.weak.iter_mut());
        for bucket in buckets
            .chain(table.names.values_mut())
            .chain(table.ips.values_mut())
        {
            // Stable: among equal prefixes the earlier entry stays first and wins.
            bucket
                .prefixes
                .sort_by_key(|p| std::cmp::Reverse(p.lower.len()));
        }
        table
    }

    /// Routes one request. `local_ip` is the address the connection arrived on, `host_header`
    /// the raw Host header (port allowed), `path` the percent-decoded path without the query.
    pub fn route(
        &self,
        local_ip: IpAddr,
        host_header: Option<&str>,
        path: &str,
    ) -> Result<&T, RouteError> {
        let host = host_header.map(host_key);
        let name_bucket = host.as_deref().and_then(|h| self.names.get(h));
        let ip_bucket = self.ips.get(&local_ip.to_canonical());

        let buckets = [
            self.strong.as_ref(),
            name_bucket,
            ip_bucket,
            self.weak.as_ref(),
        ];
        let mut any_host_matched = false;
        for bucket in buckets.into_iter().flatten() {
            any_host_matched = true;
            if let Some(target) = bucket.best_match(path) {
                return Ok(&self.targets[target]);
            }
        }
        Err(if any_host_matched {
            RouteError::Url
        } else {
            RouteError::Hostname
        })
    }
}

impl Bucket {
    /// The target of the longest prefix matching `path`.
    fn best_match(&self, path: &str) -> Option<usize> {
        self.prefixes
            .iter()
            .find(|p| p.matches(path))
            .map(|p| p.target)
    }
}

impl Prefix {
    fn new(raw: &str, target: usize) -> Self {
        let trimmed = raw.trim_end_matches('/');
        let mut lower = String::with_capacity(trimmed.len() + 1);
        if !trimmed.is_empty() && !trimmed.starts_with('/') {
            lower.push('/');
        }
        lower.extend(trimmed.chars().flat_map(char::to_lowercase));
        Prefix {
            ascii: lower.is_ascii(),
            lower: lower.into(),
            target,
        }
    }

    /// Whether `path` starts with this prefix, case-insensitively, ending at a segment
    /// boundary (end of path or `/`).
    fn matches(&self, path: &str) -> bool {
        if self.lower.is_empty() {
            // `/`: every path, even one that does not start with `/` (`*`, or empty).
            return true;
        }
        let matched_len = if self.ascii {
            // Fast path: compare bytes. A non-ASCII byte in `path` never equals an ASCII one,
            // so the cut after `len` bytes can only be tested where the bytes matched.
            let n = self.lower.len();
            if path.len() < n || !path.as_bytes()[..n].eq_ignore_ascii_case(self.lower.as_bytes()) {
                return false;
            }
            n
        } else {
            match lowercase_prefix_len(path, &self.lower) {
                Some(n) => n,
                None => return false,
            }
        };
        matches!(path.as_bytes().get(matched_len), None | Some(b'/'))
    }
}

/// If `path` lower-cased (Unicode) starts with `lower`, ending on a character boundary of
/// `path`, the byte length of that part of `path`. Allocates nothing.
fn lowercase_prefix_len(path: &str, lower: &str) -> Option<usize> {
    let mut want = lower.chars().peekable();
    for (i, c) in path.char_indices() {
        if want.peek().is_none() {
            return Some(i);
        }
        for lc in c.to_lowercase() {
            if want.next() != Some(lc) {
                return None;
            }
        }
    }
    want.peek().is_none().then_some(path.len())
}

/// A binding's host name in the form `route` looks it up: ASCII lower-case, no trailing dot.
fn normalize_name(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

/// The Host header reduced to the key of `RouteTable::names`: port removed, trailing dot
/// removed, ASCII lower-cased (borrowed unless it had upper-case letters). `[v6]:port` keeps
/// its brackets, since explicit-host bindings hold IPv6 literals in that form.
fn host_key(header: &str) -> Cow<'_, str> {
    // Byte searches: a Host is a few bytes, where `str::find`'s searcher costs more than
    // the search.
    let at = |byte: u8| header.bytes().position(|b| b == byte);
    let host = if header.starts_with('[') {
        match at(b']') {
            Some(end) => &header[..=end],
            None => header,
        }
    } else {
        match at(b':') {
            Some(colon) => &header[..colon],
            None => header,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn entry(host: HostPattern, prefix: &str, target: &'static str) -> RouteEntry<&'static str> {
        RouteEntry {
            host,
            path_prefix: prefix.to_owned(),
            target,
        }
    }

    fn name(n: &str) -> HostPattern {
        HostPattern::Name(n.to_owned())
    }

    /// One request and what it should route to: `(local ip, host header, path, expected)`.
    type Case<'a> = (
        IpAddr,
        Option<&'a str>,
        &'a str,
        Result<&'a str, RouteError>,
    );

    fn check(table: &RouteTable<&'static str>, cases: &[Case<'_>]) {
        for (ip, host, path, want) in cases {
            let got = table.route(*ip, *host, path).copied();
            assert_eq!(got, *want, "route({ip}, {host:?}, {path:?})");
        }
    }

    #[test]
    fn buckets_are_searched_strong_explicit_ip_weak() {
        let table = RouteTable::new(vec![
            entry(HostPattern::Weak, "/", "weak"),
            entry(HostPattern::Ip(LOCAL), "/", "ip"),
            entry(name("example.com"), "/", "explicit"),
            entry(HostPattern::Strong, "/strong", "strong"),
        ]);
        check(
            &table,
            &[
                (LOCAL, Some("example.com"), "/strong/x", Ok("strong")),
                (OTHER, None, "/strong", Ok("strong")),
                (LOCAL, Some("example.com"), "/x", Ok("explicit")),
                (OTHER, Some("example.com"), "/x", Ok("explicit")),
                (LOCAL, Some("other.com"), "/x", Ok("ip")),
                (LOCAL, None, "/x", Ok("ip")),
                (OTHER, Some("other.com"), "/x", Ok("weak")),
                (OTHER, None, "/", Ok("weak")),
            ],
        );
    }

    #[test]
    fn first_bucket_with_a_match_wins_even_with_a_shorter_prefix() {
        let table = RouteTable::new(vec![
            entry(HostPattern::Weak, "/app/deep", "weak-deep"),
            entry(name("example.com"), "/", "explicit-root"),
            entry(name("example.com"), "/app", "explicit-app"),
        ]);
        check(
            &table,
            &[
                (
                    LOCAL,
                    Some("example.com"),
                    "/app/deep/x",
                    Ok("explicit-app"),
                ),
                (LOCAL, Some("example.com"), "/other", Ok("explicit-root")),
                (LOCAL, Some("other.com"), "/app/deep/x", Ok("weak-deep")),
            ],
        );
    }

    #[test]
    fn longest_prefix_wins_within_a_bucket() {
        let table = RouteTable::new(vec![
            entry(HostPattern::Weak, "/", "root"),
            entry(HostPattern::Weak, "/a/b/c/", "abc"),
            entry(HostPattern::Weak, "/a", "a"),
            entry(HostPattern::Weak, "/a/b", "ab"),
        ]);
        check(
            &table,
            &[
                (LOCAL, None, "/", Ok("root")),
                (LOCAL, None, "/x", Ok("root")),
                (LOCAL, None, "*", Ok("root")),
                (LOCAL, None, "", Ok("root")),
                (LOCAL, None, "\u{e9}", Ok("root")),
                (LOCAL, None, "/a", Ok("a")),
                (LOCAL, None, "/a/x", Ok("a")),
                (LOCAL, None, "/a/b", Ok("ab")),
                (LOCAL, None, "/a/b/", Ok("ab")),
                (LOCAL, None, "/a/b/cd", Ok("ab")),
                (LOCAL, None, "/a/b/c", Ok("abc")),
                (LOCAL, None, "/a/b/c/d/e", Ok("abc")),
            ],
        );
    }

    #[test]
    fn prefixes_match_whole_segments_only() {
        let table = RouteTable::new(vec![
            entry(HostPattern::Strong, "/app", "app"),
            entry(HostPattern::Strong, "/dir/sna/", "sna"),
        ]);
        check(
            &table,
            &[
                (LOCAL, None, "/app", Ok("app")),
                (LOCAL, None, "/app/", Ok("app")),
                (LOCAL, None, "/app/x", Ok("app")),
                (LOCAL, None, "/apple", Err(RouteError::Url)),
                (LOCAL, None, "/ap", Err(RouteError::Url)),
                (LOCAL, None, "/dir/sna", Ok("sna")),
                (LOCAL, None, "/dir/app.htm", Err(RouteError::Url)),
                (LOCAL, None, "/dir/snack", Err(RouteError::Url)),
                (LOCAL, None, "", Err(RouteError::Url)),
            ],
        );
    }

    #[test]
    fn trailing_slash_in_prefix_is_optional() {
        let with = RouteTable::new(vec![entry(HostPattern::Weak, "/app/", "t")]);
        let without = RouteTable::new(vec![entry(HostPattern::Weak, "/app", "t")]);
        for path in ["/app", "/app/", "/app/x", "/apple", "/", "/APP/"] {
            assert_eq!(
                with.route(LOCAL, None, path),
                without.route(LOCAL, None, path),
                "{path}"
            );
        }
    }

    #[test]
    fn host_and_path_are_case_insensitive() {
        let table = RouteTable::new(vec![
            entry(name("Example.COM"), "/App/", "app"),
            entry(name("example.com"), "/Straße", "unicode"),
        ]);
        check(
            &table,
            &[
                (LOCAL, Some("EXAMPLE.com"), "/APP/x", Ok("app")),
                (LOCAL, Some("example.com"), "/app", Ok("app")),
                (LOCAL, Some("eXaMpLe.CoM"), "/aPp/", Ok("app")),
                (LOCAL, Some("example.com"), "/STRASSE", Err(RouteError::Url)),
                (LOCAL, Some("example.com"), "/STRAßE/x", Ok("unicode")),
                (
                    LOCAL,
                    Some("example.com"),
                    "/straßenbahn",
                    Err(RouteError::Url),
                ),
            ],
        );
    }

    #[test]
    fn host_header_port_and_trailing_dot_are_ignored() {
        let table = RouteTable::new(vec![
            entry(name("example.com."), "/", "name"),
            entry(name("[::1]"), "/", "v6"),
            entry(name("127.0.0.1"), "/", "v4"),
        ]);
        check(
            &table,
            &[
                (LOCAL, Some("example.com:8080"), "/", Ok("name")),
                (LOCAL, Some("example.com."), "/", Ok("name")),
                (LOCAL, Some("Example.Com.:80"), "/", Ok("name")),
                (LOCAL, Some("[::1]:8080"), "/", Ok("v6")),
                (LOCAL, Some("[::1]"), "/", Ok("v6")),
                (LOCAL, Some("127.0.0.1:80"), "/", Ok("v4")),
                (LOCAL, Some("::1"), "/", Err(RouteError::Hostname)),
                (LOCAL, Some("[::1"), "/", Err(RouteError::Hostname)),
                (LOCAL, Some("example.com.."), "/", Err(RouteError::Hostname)),
            ],
        );
    }

    #[test]
    fn ipv4_mapped_local_address_matches_ipv4_binding() {
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let table = RouteTable::new(vec![
            entry(HostPattern::Ip(LOCAL), "/", "v4"),
            entry(HostPattern::Ip(v6), "/", "v6"),
        ]);
        check(
            &table,
            &[
                (mapped, None, "/", Ok("v4")),
                (LOCAL, None, "/", Ok("v4")),
                (v6, None, "/", Ok("v6")),
                (OTHER, None, "/", Err(RouteError::Hostname)),
            ],
        );
        let mapped_binding = RouteTable::new(vec![entry(HostPattern::Ip(mapped), "/", "m")]);
        assert_eq!(mapped_binding.route(LOCAL, None, "/"), Ok(&"m"));
    }

    #[test]
    fn unknown_host_is_a_hostname_error_and_known_host_without_prefix_a_url_error() {
        let table = RouteTable::new(vec![
            entry(name("example.com"), "/app", "app"),
            entry(HostPattern::Ip(LOCAL), "/ip", "ip"),
        ]);
        check(
            &table,
            &[
                (OTHER, Some("other.com"), "/app", Err(RouteError::Hostname)),
                (OTHER, None, "/app", Err(RouteError::Hostname)),
                (OTHER, Some("example.com"), "/other", Err(RouteError::Url)),
                (LOCAL, Some("other.com"), "/app", Err(RouteError::Url)),
                (LOCAL, Some("example.com"), "/ip", Ok("ip")),
            ],
        );
        assert_eq!(RouteError::Hostname.reason(), "Hostname");
        assert_eq!(RouteError::Url.reason(), "URL");
        let empty: RouteTable<()> = RouteTable::new(Vec::new());
        assert_eq!(empty.route(LOCAL, None, "/"), Err(RouteError::Hostname));
        let strong = RouteTable::new(vec![entry(HostPattern::Strong, "/a", "a")]);
        assert_eq!(strong.route(LOCAL, None, "/b"), Err(RouteError::Url));
    }

    #[test]
    fn duplicate_binding_keeps_the_first() {
        let table = RouteTable::new(vec![
            entry(HostPattern::Weak, "/app/", "first"),
            entry(HostPattern::Weak, "/APP", "second"),
        ]);
        assert_eq!(table.route(LOCAL, None, "/app"), Ok(&"first"));
    }

    #[test]
    fn lowercase_host_is_borrowed() {
        assert!(matches!(
            host_key("example.com:80"),
            Cow::Borrowed("example.com")
        ));
        assert!(matches!(host_key("[::1]:80"), Cow::Borrowed("[::1]")));
        assert!(matches!(host_key("Example.com"), Cow::Owned(_)));
    }

    /// Which bucket a test target came from: 0 strong, 1 explicit, 2 IP, 3 weak.
    type Tagged = (u8, usize);

    fn pattern(bucket: u8) -> HostPattern {
        match bucket {
            0 => HostPattern::Strong,
            1 => name("example.com"),
            2 => HostPattern::Ip(LOCAL),
            _ => HostPattern::Weak,
        }
    }

    proptest! {
        #[test]
        fn route_never_panics(
            prefixes in proptest::collection::vec(("[0-3]", "\\PC{0,12}"), 0..8),
            host in proptest::option::of("\\PC{0,20}"),
            path in "\\PC{0,30}",
        ) {
            let entries = prefixes
                .iter()
                .enumerate()
                .map(|(i, (b, p))| RouteEntry {
                    host: pattern(b.parse().unwrap()),
                    path_prefix: p.clone(),
                    target: i,
                })
                .collect();
            let table = RouteTable::new(entries);
            let _ = table.route(LOCAL, host.as_deref(), &path);
            let _ = table.route(OTHER, host.as_deref(), &path);
        }

        #[test]
        fn root_prefix_always_matches_when_its_bucket_host_matches(
            bucket in 0u8..4,
            others in proptest::collection::vec((0u8..4, "(/[a-zA-Zß]{1,3}){1,3}/?"), 0..8),
            host_case in "(?i)example\\.com",
            port in proptest::option::of(1u16..),
            path in "\\PC{0,30}",
        ) {
            let mut entries: Vec<RouteEntry<Tagged>> = others
                .iter()
                .enumerate()
                .filter(|(_, (b, _))| *b >= bucket)
                .map(|(i, (b, p))| RouteEntry {
                    host: pattern(*b),
                    path_prefix: p.clone(),
                    target: (*b, i),
                })
                .collect();
            entries.push(RouteEntry {
                host: pattern(bucket),
                path_prefix: "/".to_owned(),
                target: (bucket, usize::MAX),
            });
            let table = RouteTable::new(entries);
            let host = match port {
                Some(p) => format!("{host_case}:{p}"),
                None => host_case,
            };
            let got = table.route(LOCAL, Some(&host), &path);
            prop_assert_eq!(got.map(|t| t.0), Ok(bucket));
        }
    }
}
