//! The keel.toml schema: sections, defaults, and the checks that span sections (app → pool,
//! duplicate site names, binding + path conflicts).
//!
//! A bad value is recorded and replaced by its default so the walk goes on and finds the next
//! problem; any recorded problem makes the whole load fail, so a default never leaks out.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::fields::{Checker, Value, join, line_of};
use super::{
    AppConfig, Binding, Config, ConfigError, ConfigSource, DEFAULT_QUEUE_LENGTH,
    DEFAULT_QUEUE_TIMEOUT, DEFAULT_WORKERS, ListenerConfig, LogConfig, PoolConfig, Problem,
    RetryPolicy, SiteConfig, resolve_program,
};

const ROOT_KEYS: &[&str] = &["listener", "log", "site", "pool"];
const LISTENER_KEYS: &[&str] = &["shutdown_timeout"];
const LOG_KEYS: &[&str] = &["error_log"];
const SITE_KEYS: &[&str] = &["name", "bindings", "app"];
const APP_KEYS: &[&str] = &["path", "pool"];
const POOL_KEYS: &[&str] = &[
    "command",
    "workers",
    "queue_length",
    "queue_timeout",
    "capacity",
    "retry",
    "env",
    "cwd",
];

const NAME_RULE: &str = "letters, digits, '_', '.' and '-'";
const BINDING_EXAMPLE: &str = "\"http://127.0.0.1:8080\"";

pub(super) fn load(
    text: &str,
    source: ConfigSource,
    base_dir: PathBuf,
) -> Result<Config, ConfigError> {
    let (doc, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        let problems = syntax_errors
            .iter()
            .map(|e| syntax_problem(text, e))
            .collect();
        return Err(ConfigError::new(source.to_string(), problems));
    }
    let root = doc.get_ref();
    let mut ck = Checker::new(text);
    ck.unknown_keys(root, "", ROOT_KEYS);

    let listener = root
        .get("listener")
        .map(|v| read_listener(&mut ck, v))
        .unwrap_or_default();
    let log = root
        .get("log")
        .map(|v| read_log(&mut ck, v, &base_dir))
        .unwrap_or_default();
    let pools = root
        .get("pool")
        .map(|v| read_pools(&mut ck, v, &base_dir))
        .unwrap_or_default();
    let sites = read_sites(&mut ck, root.get("site"));
    check_site_names_unique(&mut ck, &sites);
    check_apps_name_pools(&mut ck, &sites, &pools);
    check_no_shared_binding_and_path(&mut ck, &sites);

    let problems = ck.into_problems();
    if !problems.is_empty() {
        return Err(ConfigError::new(source.to_string(), problems));
    }
    Ok(Config {
        source,
        base_dir,
        listener,
        log,
        sites: sites.into_iter().map(SiteDraft::into_config).collect(),
        pools,
    })
}

fn syntax_problem(text: &str, error: &toml::de::Error) -> Problem {
    let span = error.span();
    let near = span
        .as_ref()
        .and_then(|s| text.get(s.clone()))
        .filter(|s| !s.is_empty() && !s.contains('\n') && s.len() <= 40);
    let message = match near {
        Some(near) => format!("{} (at `{near}`)", error.message()),
        None => error.message().to_owned(),
    };
    Problem {
        line: span.map(|s| line_of(text, s.start)),
        key: "TOML syntax".to_owned(),
        message,
    }
}

fn read_listener(ck: &mut Checker<'_>, v: &Value<'_>) -> ListenerConfig {
    let mut listener = ListenerConfig::default();
    let Some(t) = ck.table(v, "listener") else {
        return listener;
    };
    ck.unknown_keys(t, "listener", LISTENER_KEYS);
    if let Some(v) = t.get("shutdown_timeout")
        && let Some(d) = ck.duration(v, "listener.shutdown_timeout", true)
    {
        listener.shutdown_timeout = d;
    }
    listener
}

fn read_log(ck: &mut Checker<'_>, v: &Value<'_>, base_dir: &Path) -> LogConfig {
    let mut log = LogConfig::default();
    let Some(t) = ck.table(v, "log") else {
        return log;
    };
    ck.unknown_keys(t, "log", LOG_KEYS);
    if let Some(v) = t.get("error_log") {
        log.error_log = read_path(ck, v, "log.error_log", base_dir);
    }
    log
}

/// A non-empty path string, resolved against `base_dir` (an absolute path stays as is).
fn read_path(ck: &mut Checker<'_>, v: &Value<'_>, key: &str, base_dir: &Path) -> Option<PathBuf> {
    let path = ck.string(v, key)?;
    if path.is_empty() {
        ck.report(
            &v.span(),
            key,
            "must not be empty (a path relative to the config file's directory)",
        );
        return None;
    }
    Some(base_dir.join(path))
}

fn read_pools(
    ck: &mut Checker<'_>,
    v: &Value<'_>,
    base_dir: &Path,
) -> BTreeMap<String, PoolConfig> {
    let mut pools = BTreeMap::new();
    let Some(t) = ck.table(v, "pool") else {
        return pools;
    };
    for (name, v) in t.iter() {
        let name: &str = name.get_ref();
        let key = join("pool", name);
        if !is_name(name) {
            let message = format!("{name:?} is not a valid pool name (use {NAME_RULE})");
            ck.report(&v.span(), &key, message);
        }
        // Kept even when invalid, so that apps naming it are not also reported.
        pools.insert(name.to_owned(), read_pool(ck, name, v, &key, base_dir));
    }
    pools
}

fn read_pool(
    ck: &mut Checker<'_>,
    name: &str,
    v: &Value<'_>,
    key: &str,
    base_dir: &Path,
) -> PoolConfig {
    let mut pool = PoolConfig {
        name: name.to_owned(),
        command: Vec::new(),
        workers: DEFAULT_WORKERS,
        queue_length: DEFAULT_QUEUE_LENGTH,
        queue_timeout: DEFAULT_QUEUE_TIMEOUT,
        capacity: None,
        retry: RetryPolicy::default(),
        env: BTreeMap::new(),
        cwd: None,
    };
    let Some(t) = ck.table(v, key) else {
        return pool;
    };
    ck.unknown_keys(t, key, POOL_KEYS);
    let field = |k: &str| join(key, k);

    match t.get("command") {
        Some(v) => pool.command = read_command(ck, v, &field("command"), base_dir),
        None => ck.report(
            &v.span(),
            &field("command"),
            "is missing (the worker program and its arguments, e.g. command = [\"my-worker\", \"--flag\"])",
        ),
    }
    if let Some(v) = t.get("workers")
        && let Some(n) = ck.integer(v, &field("workers"), 1..=1024)
    {
        pool.workers = n;
    }
    if let Some(v) = t.get("queue_length")
        && let Some(n) = ck.integer(v, &field("queue_length"), 1..=65535)
    {
        pool.queue_length = n;
    }
    if let Some(v) = t.get("queue_timeout")
        && let Some(d) = ck.duration(v, &field("queue_timeout"), false)
    {
        pool.queue_timeout = d;
    }
    if let Some(v) = t.get("capacity") {
        pool.capacity = ck.integer(v, &field("capacity"), 1..=65535);
    }
    if let Some(v) = t.get("retry")
        && let Some(text) = ck.string(v, &field("retry"))
    {
        match RetryPolicy::from_name(text) {
            Some(policy) => pool.retry = policy,
            None => {
                let valid = RetryPolicy::NAMES.map(|n| format!("{n:?}")).join(", ");
                let message = format!("{text:?} is not a retry policy (expected one of {valid})");
                ck.report(&v.span(), &field("retry"), message);
            }
        }
    }
    if let Some(v) = t.get("env") {
        pool.env = read_env(ck, v, &field("env"));
    }
    if let Some(v) = t.get("cwd") {
        pool.cwd = read_path(ck, v, &field("cwd"), base_dir);
    }
    pool
}

fn read_command(ck: &mut Checker<'_>, v: &Value<'_>, key: &str, base_dir: &Path) -> Vec<String> {
    let Some(items) = ck.array(v, key) else {
        return Vec::new();
    };
    if items.is_empty() {
        ck.report(
            &v.span(),
            key,
            "must not be empty (the worker program and its arguments)",
        );
        return Vec::new();
    }
    let mut argv: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        if let Some(arg) = ck.string(item, &item_key) {
            if i == 0 && arg.is_empty() {
                ck.report(
                    &item.span(),
                    &item_key,
                    "must not be empty (the program to run)",
                );
            }
            argv.push(arg.to_owned());
        }
    }
    if let Some(program) = argv.first_mut() {
        *program = resolve_program(program, base_dir);
    }
    argv
}

fn read_env(ck: &mut Checker<'_>, v: &Value<'_>, key: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let Some(t) = ck.table(v, key) else {
        return env;
    };
    for (name, v) in t.iter() {
        let name: &str = name.get_ref();
        let var_key = join(key, name);
        if name.is_empty() || name.contains(['=', '\0']) {
            ck.report(
                &v.span(),
                &var_key,
                "is not an environment variable name (no '=' or NUL, not empty)",
            );
        }
        if let Some(value) = ck.string(v, &var_key) {
            env.insert(name.to_owned(), value.to_owned());
        }
    }
    env
}

/// A site as read, with the spans the cross-section checks report at.
struct SiteDraft {
    index: usize,
    /// Span of the `[[site]]` table, for problems about a missing key.
    span: Range<usize>,
    name: Option<Located<String>>,
    bindings: Vec<Located<Binding>>,
    apps: Vec<AppDraft>,
}

struct AppDraft {
    index: usize,
    path: Located<String>,
    pool: Located<String>,
}

struct Located<T> {
    value: T,
    span: Range<usize>,
}

impl SiteDraft {
    fn key(&self) -> String {
        format!("site[{}]", self.index)
    }

    fn into_config(self) -> SiteConfig {
        SiteConfig {
            name: self.name.map(|n| n.value).unwrap_or_default(),
            bindings: self.bindings.into_iter().map(|b| b.value).collect(),
            apps: self
                .apps
                .into_iter()
                .map(|a| AppConfig {
                    path: a.path.value,
                    pool: a.pool.value,
                })
                .collect(),
        }
    }
}

fn read_sites(ck: &mut Checker<'_>, v: Option<&Value<'_>>) -> Vec<SiteDraft> {
    const NEED_ONE: &str = "at least one [[site]] is required, with a name, bindings and app";
    let Some(v) = v else {
        ck.report(&(0..0), "site", NEED_ONE);
        return Vec::new();
    };
    let items = match v.get_ref() {
        DeValue::Array(items) => items,
        DeValue::Table(_) => {
            ck.report(
                &v.span(),
                "site",
                "must be an array of tables: write [[site]], not [site]",
            );
            return Vec::new();
        }
        _ => {
            ck.report(
                &v.span(),
                "site",
                "must be an array of tables, written [[site]]",
            );
            return Vec::new();
        }
    };
    if items.is_empty() {
        ck.report(&v.span(), "site", NEED_ONE);
    }
    items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| read_site(ck, i, v))
        .collect()
}

fn read_site(ck: &mut Checker<'_>, index: usize, v: &Value<'_>) -> Option<SiteDraft> {
    let key = format!("site[{index}]");
    let t = ck.table(v, &key)?;
    ck.unknown_keys(t, &key, SITE_KEYS);
    let mut site = SiteDraft {
        index,
        span: v.span(),
        name: None,
        bindings: Vec::new(),
        apps: Vec::new(),
    };

    let name_key = format!("{key}.name");
    match t.get("name") {
        Some(v) => {
            if let Some(name) = ck.string(v, &name_key) {
                if is_name(name) {
                    site.name = Some(Located {
                        value: name.to_owned(),
                        span: v.span(),
                    });
                } else {
                    ck.report(
                        &v.span(),
                        &name_key,
                        format!("{name:?} is not a valid site name (use {NAME_RULE})"),
                    );
                }
            }
        }
        None => ck.report(
            &site.span,
            &name_key,
            format!("is missing (a unique name of {NAME_RULE})"),
        ),
    }

    let bindings_key = format!("{key}.bindings");
    match t.get("bindings") {
        Some(v) => site.bindings = read_bindings(ck, v, &bindings_key),
        None => {
            let message = format!("is missing (a list such as bindings = [{BINDING_EXAMPLE}])");
            ck.report(&site.span, &bindings_key, message);
        }
    }

    let app_key = format!("{key}.app");
    match t.get("app") {
        Some(v) => site.apps = read_apps(ck, v, &app_key),
        None => ck.report(
            &site.span,
            &app_key,
            "is missing (a list such as app = [{ path = \"/\", pool = \"demo\" }])",
        ),
    }
    Some(site)
}

fn read_bindings(ck: &mut Checker<'_>, v: &Value<'_>, key: &str) -> Vec<Located<Binding>> {
    let Some(items) = ck.array(v, key) else {
        return Vec::new();
    };
    if items.is_empty() {
        let message =
            format!("must not be empty (add at least one binding such as {BINDING_EXAMPLE})");
        ck.report(&v.span(), key, message);
    }
    let mut bindings: Vec<Located<Binding>> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        let Some(text) = ck.string(item, &item_key) else {
            continue;
        };
        match text.parse::<Binding>() {
            Ok(binding) => {
                if let Some(first) = bindings.iter().position(|b| b.value == binding) {
                    let message =
                        format!("{binding} is listed twice in this site (also {key}[{first}])");
                    ck.report(&item.span(), &item_key, message);
                }
                bindings.push(Located {
                    value: binding,
                    span: item.span(),
                });
            }
            Err(e) => ck.report(&item.span(), &item_key, e.to_string()),
        }
    }
    bindings
}

fn read_apps(ck: &mut Checker<'_>, v: &Value<'_>, key: &str) -> Vec<AppDraft> {
    let Some(items) = ck.array(v, key) else {
        return Vec::new();
    };
    if items.is_empty() {
        let message =
            "must not be empty (add at least one app such as { path = \"/\", pool = \"demo\" })";
        ck.report(&v.span(), key, message);
    }
    let mut apps: Vec<AppDraft> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let item_key = format!("{key}[{index}]");
        let Some(t) = ck.table(item, &item_key) else {
            continue;
        };
        ck.unknown_keys(t, &item_key, APP_KEYS);
        let path = read_app_path(ck, item, t, &item_key);
        let pool = read_app_pool(ck, item, t, &item_key);
        let (Some(path), Some(pool)) = (path, pool) else {
            continue;
        };
        if let Some(first) = apps.iter().find(|a| same_path(&a.path.value, &path.value)) {
            let message = format!(
                "{:?} is mapped twice in this site (also {key}[{}]; paths compare ignoring case and a trailing \"/\")",
                path.value, first.index
            );
            ck.report(&path.span, &format!("{item_key}.path"), message);
        }
        apps.push(AppDraft { index, path, pool });
    }
    apps
}

fn read_app_path(
    ck: &mut Checker<'_>,
    app: &Value<'_>,
    t: &DeTable<'_>,
    key: &str,
) -> Option<Located<String>> {
    let key = format!("{key}.path");
    let Some(v) = t.get("path") else {
        ck.report(
            &app.span(),
            &key,
            "is missing (a URL path prefix starting with \"/\")",
        );
        return None;
    };
    let path = ck.string(v, &key)?;
    if let Err(why) = check_app_path(path) {
        ck.report(&v.span(), &key, format!("{path:?} {why}"));
        return None;
    }
    Some(Located {
        value: path.to_owned(),
        span: v.span(),
    })
}

fn read_app_pool(
    ck: &mut Checker<'_>,
    app: &Value<'_>,
    t: &DeTable<'_>,
    key: &str,
) -> Option<Located<String>> {
    let key = format!("{key}.pool");
    let Some(v) = t.get("pool") else {
        ck.report(
            &app.span(),
            &key,
            "is missing (the name of a [pool.NAME] section)",
        );
        return None;
    };
    let pool = ck.string(v, &key)?;
    Some(Located {
        value: pool.to_owned(),
        span: v.span(),
    })
}

/// An app path is the path part of an HTTP.sys URL prefix: it must not be able to mean two
/// things once the listener has canonicalised a request's URL.
fn check_app_path(path: &str) -> Result<(), &'static str> {
    if !path.starts_with('/') {
        return Err("must start with \"/\" (e.g. \"/\" or \"/shop\")");
    }
    if path.contains(['?', '#']) {
        return Err("must not contain '?' or '#' (an app path is a URL path prefix)");
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters (percent-encode them)");
    }
    let dot_segment = path.split('/').any(|seg| matches!(seg, "." | ".."));
    if path.contains("//") || dot_segment {
        return Err(
            "must not contain empty, \".\" or \"..\" segments (write it canonically, e.g. \"/shop/api\")",
        );
    }
    Ok(())
}

/// Two app paths route the same requests when they differ only in case or a trailing "/"
/// (routing lower-cases both sides the same way).
fn same_path(a: &str, b: &str) -> bool {
    let key = |p: &str| {
        let trimmed = if p.len() > 1 {
            p.strip_suffix('/').unwrap_or(p)
        } else {
            p
        };
        trimmed.to_lowercase()
    };
    key(a) == key(b)
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn check_site_names_unique(ck: &mut Checker<'_>, sites: &[SiteDraft]) {
    let mut first_with: BTreeMap<&str, &SiteDraft> = BTreeMap::new();
    for site in sites {
        let Some(name) = &site.name else { continue };
        match first_with.get(name.value.as_str()) {
            Some(first) => {
                let message = format!(
                    "{:?} is already the name of {} (site names must be unique)",
                    name.value,
                    first.key()
                );
                ck.report(&name.span, &format!("{}.name", site.key()), message);
            }
            None => {
                first_with.insert(&name.value, site);
            }
        }
    }
}

fn check_apps_name_pools(
    ck: &mut Checker<'_>,
    sites: &[SiteDraft],
    pools: &BTreeMap<String, PoolConfig>,
) {
    let defined: BTreeSet<&str> = pools.keys().map(String::as_str).collect();
    for site in sites {
        for app in &site.apps {
            let pool = &app.pool.value;
            if defined.contains(pool.as_str()) {
                continue;
            }
            let valid = if defined.is_empty() {
                format!("no pools are defined; add a [pool.{pool}] section")
            } else {
                let names: Vec<_> = defined.iter().map(|n| format!("{n:?}")).collect();
                format!(
                    "add a [pool.{pool}] section or use one of {}",
                    names.join(", ")
                )
            };
            let key = format!("{}.app[{}].pool", site.key(), app.index);
            ck.report(
                &app.pool.span,
                &key,
                format!("there is no pool named {pool:?} ({valid})"),
            );
        }
    }
}

/// HTTP.sys refuses a second registration of the same URL prefix; here that is two sites with
/// an identical binding mapping the same path. Reported once per app, at the later site.
fn check_no_shared_binding_and_path(ck: &mut Checker<'_>, sites: &[SiteDraft]) {
    for (j, later) in sites.iter().enumerate() {
        for app in &later.apps {
            let clash = sites[..j].iter().find_map(|earlier| {
                let shares_path = earlier
                    .apps
                    .iter()
                    .any(|a| same_path(&a.path.value, &app.path.value));
                let binding = earlier
                    .bindings
                    .iter()
                    .find(|b| later.bindings.iter().any(|l| l.value == b.value))?;
                shares_path.then_some((earlier, &binding.value))
            });
            let Some((earlier, binding)) = clash else {
                continue;
            };
            let earlier_name = earlier.name.as_ref().map_or("?", |n| n.value.as_str());
            let later_name = later.name.as_ref().map_or("?", |n| n.value.as_str());
            let message = format!(
                "sites {earlier_name:?} ({}) and {later_name:?} both map {:?} on {binding} \
                 (use a different path, host name or port in one of them)",
                earlier.key(),
                app.path.value,
            );
            let key = format!("{}.app[{}].path", later.key(), app.index);
            ck.report(&app.path.span, &key, message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_paths_are_canonical_prefixes() {
        for ok in ["/", "/shop", "/shop/", "/shop/api", "/a.b/c-d", "/%20x"] {
            assert_eq!(check_app_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "", "shop", "/shop?x", "/a#b", "/a b", "//", "/a//b", "/a/./b", "/a/..", "/..", "/./",
        ] {
            assert!(check_app_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_are_the_same_ignoring_case_and_a_trailing_slash() {
        assert!(same_path("/Shop", "/shop/"));
        assert!(same_path("/", "/"));
        assert!(same_path("/CAFÉ", "/café"));
        assert!(!same_path("/shop", "/shops"));
        assert!(!same_path("/", "/shop"));
    }
}
