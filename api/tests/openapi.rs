//! `/openapi.json` covers every route: the routes registered in the code (every
//! `.route("path", method(..))` in `api/src`) are each documented with their methods,
//! and every documented operation is served by the real server (not the fallback 404).
//! Adding a route without documenting it fails here.

#![allow(clippy::unwrap_used)] // test harness: a panic is a failed test

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::spawn_app;
use serde_json::Value;

/// `(method, path)` of every `.route(..)` call in the crate's sources.
fn registered_routes() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    collect_rs(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    let mut routes = BTreeSet::new();
    for file in files {
        let src = std::fs::read_to_string(&file).unwrap();
        let mut rest = src.as_str();
        while let Some(i) = rest.find(".route(") {
            rest = &rest[i + ".route(".len()..];
            let args = balanced(rest);
            let trimmed = args.trim_start();
            let Some(lit) = trimmed.strip_prefix('"') else {
                continue;
            };
            let path = &lit[..lit.find('"').unwrap()];
            let methods: Vec<&str> = ["get", "post", "put", "delete", "patch"]
                .into_iter()
                .filter(|m| calls(args, m))
                .collect();
            assert!(
                !methods.is_empty(),
                "{}: no method for route {path}",
                file.display()
            );
            for m in methods {
                routes.insert((m.to_owned(), path.to_owned()));
            }
        }
    }
    routes
}

fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The text up to the `)` closing the call whose `(` was just consumed.
fn balanced(s: &str) -> &str {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &s[..i];
                }
            }
            _ => {}
        }
    }
    s
}

/// Whether `args` calls `name(` as a method router (`get(` or `.get(`, not `fallback(`).
fn calls(args: &str, name: &str) -> bool {
    let pat = format!("{name}(");
    args.match_indices(&pat).any(|(i, _)| {
        i == 0 || {
            let before = args[..i].chars().next_back().unwrap();
            !(before.is_alphanumeric() || before == '_')
        }
    })
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                ops.insert((method.clone(), path.clone()));
            }
        }
    }
    ops
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let app = spawn_app("sqlite").await;
    let resp = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");

    let registered = registered_routes();
    assert!(
        registered.len() >= 30,
        "the source scan found only {registered:?}"
    );
    let docs = documented(&doc);
    let missing: Vec<_> = registered.difference(&docs).collect();
    assert!(
        missing.is_empty(),
        "routes not in /openapi.json: {missing:?}"
    );
    let unknown: Vec<_> = docs.difference(&registered).collect();
    assert!(
        unknown.is_empty(),
        "documented operations no code registers: {unknown:?}"
    );

    // Every documented operation reaches a handler: anything but the fallback's
    // "no route" 404 (path parameters get placeholder values).
    for (method, path) in &docs {
        let url = format!(
            "{}{}",
            app.base,
            path.replace("{name}", "nosuchasset").replace("{id}", "1")
        );
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let resp = app.http.request(m, &url).send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert!(
            !(status == 404 && body.contains("no route for")) && status != 405,
            "{method} {path} is documented but not served: {status} {body}"
        );
    }

    // Every operation names its errors with the one error body.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if path.starts_with("/dapi/") {
                let responses = op["responses"].as_object().unwrap();
                for status in ["400", "503"] {
                    assert_eq!(
                        responses[status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_source_scan_sees_method_routers() {
    assert!(calls("post(call_user).fallback(m)", "post"));
    assert!(!calls("post(call_user).fallback(m)", "get"));
    assert!(calls("put(a).delete(b).get(c)", "delete"));
    assert!(!calls("budget(a)", "get"));
    assert_eq!(balanced("\"/x\", get(f)) rest"), "\"/x\", get(f)");
}
