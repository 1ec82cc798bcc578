//! docs/admin-api.yaml tells the truth: every documented route and status is produced by a
//! running daemon, with the documented content type and exactly the documented top-level
//! JSON keys; and nothing documented is left untried.

mod common;
use common::*;
use serde_norway::Value as Yaml;
use std::collections::BTreeSet;

fn doc() -> Yaml {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/admin-api.yaml");
    serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid YAML")
}

/// A response of the doc: its content type and, for JSON, the required top-level keys.
struct Documented {
    content_type: String,
    keys: Option<BTreeSet<String>>,
}

fn documented(doc: &Yaml, path: &str, method: &str, status: u16) -> Documented {
    let response = &doc["paths"][path][method]["responses"][status.to_string().as_str()];
    let content = response["content"]
        .as_mapping()
        .unwrap_or_else(|| panic!("{method} {path} {status}: no content documented"));
    let (content_type, media) = content.iter().next().unwrap();
    let content_type = content_type.as_str().unwrap().to_owned();
    let keys = (content_type == "application/json").then(|| {
        let reference = media["schema"]["$ref"].as_str().expect("a $ref schema");
        let name = reference.rsplit('/').next().unwrap();
        let schema = &doc["components"]["schemas"][name];
        let required: BTreeSet<String> = schema["required"]
            .as_sequence()
            .map(|r| r.iter().map(|k| k.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        let properties: BTreeSet<String> = schema["properties"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            required, properties,
            "schema {name}: every property is required"
        );
        required
    });
    Documented { content_type, keys }
}

/// Every (path, method, status) the doc lists.
fn documented_cases(doc: &Yaml) -> BTreeSet<(String, String, u16)> {
    let mut cases = BTreeSet::new();
    for (path, item) in doc["paths"].as_mapping().unwrap() {
        for (method, op) in item.as_mapping().unwrap() {
            for (status, _) in op["responses"].as_mapping().unwrap() {
                cases.insert((
                    path.as_str().unwrap().to_owned(),
                    method.as_str().unwrap().to_owned(),
                    status.as_str().unwrap().parse().unwrap(),
                ));
            }
        }
    }
    cases
}

/// One documented case: how to produce it, and where.
struct Case {
    path: &'static str,
    method: &'static str,
    status: u16,
    /// The request actually sent (the path with `{name}` filled in) and its body.
    request: &'static str,
    body: Option<String>,
    /// Sent to the daemon whose cache is off.
    cache_off: bool,
    /// Sent to the daemon whose config file was broken after it started.
    broken: bool,
    /// Sent to the daemon that is upgraded (its successor is killed at the end).
    upgraded: bool,
}

fn case(path: &'static str, method: &'static str, status: u16, request: &'static str) -> Case {
    Case {
        path,
        method,
        status,
        request,
        body: None,
        cache_off: false,
        broken: false,
        upgraded: false,
    }
}

#[test]
fn every_documented_route_answers_as_documented() {
    let doc = doc();
    assert_eq!(doc["openapi"].as_str(), Some("3.0.3"));
    // In order: state changes (disable before the 503 healthz, stop last) are part of it.
    let cases = vec![
        case("/", "get", 200, "/"),
        case("/status", "get", 200, "/status"),
        case("/healthz", "get", 200, "/healthz"),
        case("/metrics", "get", 200, "/metrics"),
        case("/pools/{name}/recycle", "post", 202, "/pools/demo/recycle"),
        case("/pools/{name}/recycle", "post", 404, "/pools/nope/recycle"),
        case("/pools/{name}/disable", "post", 200, "/pools/demo/disable"),
        case("/pools/{name}/disable", "post", 404, "/pools/nope/disable"),
        case("/healthz", "get", 503, "/healthz"),
        case("/pools/{name}/enable", "post", 200, "/pools/demo/enable"),
        case("/pools/{name}/enable", "post", 404, "/pools/nope/enable"),
        Case {
            body: Some(r#"{"url": "http://localhost/"}"#.into()),
            ..case("/cache/invalidate", "post", 200, "/cache/invalidate")
        },
        Case {
            body: Some(r#"{"url": 1}"#.into()),
            ..case("/cache/invalidate", "post", 400, "/cache/invalidate")
        },
        Case {
            body: Some(format!(
                r#"{{"prefix": "http://a/{}"}}"#,
                "x".repeat(70_000)
            )),
            ..case("/cache/invalidate", "post", 413, "/cache/invalidate")
        },
        Case {
            body: Some(r#"{"prefix": "http://localhost/"}"#.into()),
            cache_off: true,
            ..case("/cache/invalidate", "post", 409, "/cache/invalidate")
        },
        case("/reload", "post", 200, "/reload"),
        Case {
            broken: true,
            ..case("/reload", "post", 400, "/reload")
        },
        Case {
            broken: true,
            ..case("/upgrade", "post", 500, "/upgrade")
        },
        Case {
            upgraded: true,
            ..case("/upgrade", "post", 200, "/upgrade")
        },
        case("/stop", "post", 202, "/stop"),
    ];
    let tried: BTreeSet<(String, String, u16)> = cases
        .iter()
        .map(|c| (c.path.to_owned(), c.method.to_owned(), c.status))
        .collect();
    assert_eq!(
        tried,
        documented_cases(&doc),
        "the doc and this test list different routes or statuses"
    );

    let d = Daemon::start(&demo_config("start = \"always\""));
    let cache_off = Daemon::start(&format!("[cache]\nenabled = false\n{}", demo_config("")));
    let broken = Daemon::start(&demo_config(""));
    std::fs::write(broken.dir.path().join("keel.toml"), "[[site]]\nname = 1\n").unwrap();
    let upgraded = Daemon::start(&demo_config(""));
    let successor = Successor(std::cell::Cell::new(0));
    for c in &cases {
        let daemon = match (c.cache_off, c.broken, c.upgraded) {
            (true, _, _) => &cache_off,
            (_, true, _) => &broken,
            (_, _, true) => &upgraded,
            _ => &d,
        };
        let r = daemon.admin(&c.method.to_uppercase(), c.request, c.body.as_deref());
        let what = format!("{} {} (doc: {} {})", c.method, c.request, c.path, c.status);
        assert_eq!(r.status, c.status, "{what}: {}", r.text());
        let want = documented(&doc, c.path, c.method, c.status);
        let content_type = r.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with(&want.content_type),
            "{what}: content-type {content_type}, documented {}",
            want.content_type
        );
        if c.upgraded && r.status == 200 {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            successor.0.set(body["pid"].as_u64().unwrap_or(0) as u32);
        }
        if let Some(keys) = want.keys {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let got: BTreeSet<String> = body.as_object().unwrap().keys().cloned().collect();
            assert_eq!(got, keys, "{what}: top-level keys");
        }
    }
}

/// The daemon an upgrade started is no child of the test: killed by pid however it ends.
struct Successor(std::cell::Cell<u32>);

impl Drop for Successor {
    fn drop(&mut self) {
        let pid = self.0.get();
        if pid != 0 {
            let workers = children_of(pid);
            kill(pid);
            for w in workers {
                kill(w);
            }
        }
    }
}
