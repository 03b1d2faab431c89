//! The dashboard at `GET /` over real TCP: the page and each of its files
//! with their content types and the browser-hardening headers, `304` for a
//! copy the browser already has, `404` for a file that is not one of them,
//! and a page that refers only to paths of this same server. What the page
//! does in a browser is tests/browser's.

use std::collections::BTreeSet;

use http::Method;

use super::Http;
use crate::support::TestServer;

/// Every file the page loads, directly or through an `import`, with the
/// content type it must be served with.
const FILES: [(&str, &str); 13] = [
    ("/dashboard/style.css", "text/css; charset=utf-8"),
    ("/dashboard/icon.svg", "image/svg+xml"),
    ("/dashboard/app.js", "text/javascript; charset=utf-8"),
    ("/dashboard/api.js", "text/javascript; charset=utf-8"),
    ("/dashboard/dom.js", "text/javascript; charset=utf-8"),
    ("/dashboard/live.js", "text/javascript; charset=utf-8"),
    ("/dashboard/tasks.js", "text/javascript; charset=utf-8"),
    ("/dashboard/detail.js", "text/javascript; charset=utf-8"),
    ("/dashboard/create.js", "text/javascript; charset=utf-8"),
    ("/dashboard/schedules.js", "text/javascript; charset=utf-8"),
    ("/dashboard/auth.js", "text/javascript; charset=utf-8"),
    ("/dashboard/sse.js", "text/javascript; charset=utf-8"),
    ("/dashboard/signin.js", "text/javascript; charset=utf-8"),
];

/// Asserts the headers every dashboard answer carries.
fn assert_hardened(answer: &super::Answer, path: &str) {
    let policy = answer
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("{path}: no Content-Security-Policy: {answer:?}"));
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(
            policy.contains(directive),
            "{path}: {directive} in {policy}"
        );
    }
    assert!(!policy.contains("unsafe-"), "{path}: {policy}");
    assert_eq!(
        answer.header("x-content-type-options"),
        Some("nosniff"),
        "{path}"
    );
    assert_eq!(answer.header("cache-control"), Some("no-cache"), "{path}");
    assert!(answer.header("etag").is_some(), "{path}: no ETag");
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_their_types_and_a_strict_policy() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);

    let page = http.get("/").await;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_hardened(&page, "/");
    assert!(page.body.starts_with("<!doctype html>"), "{}", page.body);

    for (path, content_type) in FILES {
        let answer = http.get(path).await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(answer.header("content-type"), Some(content_type), "{path}");
        assert_hardened(&answer, path);
        assert!(!answer.bytes.is_empty(), "{path}");
        // HEAD answers the same headers, without the body.
        let head = http
            .send(http.request(Method::HEAD, path, &[], bytes::Bytes::new()))
            .await;
        assert_eq!(head.status, 200, "HEAD {path}");
        assert_eq!(head.header("content-type"), Some(content_type));
        assert!(head.bytes.is_empty(), "HEAD {path}");
    }
}

#[tokio::test]
async fn an_unchanged_file_is_304_and_an_unknown_one_404() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);

    let first = http.get("/dashboard/app.js").await;
    let etag = first.header("etag").expect("an ETag").to_owned();
    let again = http
        .send(http.request(
            Method::GET,
            "/dashboard/app.js",
            &[("if-none-match", &etag)],
            bytes::Bytes::new(),
        ))
        .await;
    assert_eq!(again.status, 304, "{again:?}");
    assert!(again.bytes.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let other = http
        .send(http.request(
            Method::GET,
            "/dashboard/app.js",
            &[("if-none-match", "\"0000000000000000\"")],
            bytes::Bytes::new(),
        ))
        .await;
    assert_eq!(other.status, 200, "another ETag gets the file");

    for path in [
        "/dashboard/nope.js",
        "/dashboard/",
        "/dashboard/../Cargo.toml",
        "/dashboard/%2e%2e/Cargo.toml",
        "/dashboard/js/app.js",
        "/dashboard/index.html",
        "/index.html",
        "/app.js",
    ] {
        let answer = http.get(path).await;
        answer.assert_error(404, tonic::Code::NotFound, "no route");
    }

    // The API next to it is untouched.
    let tasks = http.get("/api/v1/tasks").await;
    assert_eq!(tasks.status, 200, "{tasks:?}");
    assert!(tasks.header("content-security-policy").is_none());
    assert_eq!(http.post("/", "").await.status, 405);
}

#[tokio::test]
async fn the_page_refers_only_to_this_server() {
    let server = TestServer::start().await;
    let http = Http::new(server.address);
    let mut documents = vec![("/".to_owned(), http.get("/").await.body)];
    for (path, _) in FILES {
        documents.push((path.to_owned(), http.get(path).await.body));
    }

    let mut referenced = BTreeSet::new();
    for (path, text) in &documents {
        // An SVG's namespace is a name, never fetched.
        let text = &text.replace(r#"xmlns="http://www.w3.org/2000/svg""#, "");
        assert!(!text.contains("://"), "{path} names a URL with a scheme");
        assert!(!text.contains("//cdn"), "{path}");
        for reference in references(text) {
            assert!(
                reference.starts_with("/dashboard/")
                    || reference.starts_with("./")
                    || reference.starts_with("/api/v1/")
                    || reference.starts_with('#'),
                "{path} refers to {reference:?}, not a path of this server"
            );
            referenced.insert(reference);
        }
        // Data becomes text nodes only: no API that parses HTML or runs
        // text as code is used at all.
        for parser in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "DOMParser",
            "createContextualFragment",
            "eval(",
            "new Function",
            "setTimeout('",
        ] {
            assert!(!text.contains(parser), "{path} uses {parser}");
        }
    }
    // Every file the page names is served.
    for reference in &referenced {
        if let Some(file) = reference.strip_prefix("./") {
            let answer = http.get(&format!("/dashboard/{file}")).await;
            assert_eq!(answer.status, 200, "{reference}");
        } else if reference.starts_with("/dashboard/") {
            assert_eq!(http.get(reference).await.status, 200, "{reference}");
        }
    }
    assert!(referenced.contains("/dashboard/app.js"), "{referenced:?}");
    assert!(referenced.contains("./live.js"), "{referenced:?}");
}

/// The values of `src=` and `href=` attributes and the specifiers of
/// `import … from`, in HTML and JavaScript alike.
fn references(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for marker in ["src=\"", "href=\"", "from '"] {
        let closing = if marker.ends_with('\'') { '\'' } else { '"' };
        for (start, _) in text.match_indices(marker) {
            let rest = &text[start + marker.len()..];
            if let Some(end) = rest.find(closing) {
                found.push(rest[..end].to_owned());
            }
        }
    }
    found
}
