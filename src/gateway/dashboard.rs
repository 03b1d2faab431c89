//! The live dashboard: `GET /` (the page) and `GET /dashboard/{file}` (its
//! script, style sheet and icon), plain files under `dashboard/` next to
//! this one, embedded in the binary at build time. There is no build step
//! and nothing is fetched from another host: the page's script calls the
//! REST routes and their Server-Sent Events on this same port, as any
//! client does, so the dashboard can do nothing a curl user cannot.
//!
//! Every answer is locked down for a browser: a Content-Security-Policy
//! that allows only this origin and no inline script or style (so data that
//! slipped into the page as markup still could not run), `nosniff`, no
//! framing, no referrer. Files are revalidated on each load (`no-cache`)
//! against an `ETag` computed at build time, so a new binary is never
//! shadowed by a browser's old copy and an unchanged file costs a `304`.
//!
//! Nothing here reads a task: the page is the same for everyone.

use axum::{
    Router,
    extract::{Path, Request},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use super::{Gateway, error::GatewayError};

/// The policy of every dashboard answer. `default-src 'self'` covers
/// scripts, styles, images and fonts; `connect-src 'self'` keeps `fetch`
/// (the event streams included: the page reads them with `fetch`, to send
/// its bearer token) on this origin; no `'unsafe-inline'` anywhere, so an
/// injected `<script>` or `onerror=` attribute would not run even if a bug
/// let one into the page.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    /// The name under `/dashboard/` (empty for the page at `/`).
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// FNV-1a of `body`, computed by the compiler: the `ETag`.
    hash: u64,
}

/// Embeds `dashboard/<file>` as an [`Asset`] named `name`.
macro_rules! asset {
    ($name:literal, $file:literal, $content_type:expr) => {{
        const BODY: &[u8] = include_bytes!(concat!("dashboard/", $file));
        Asset {
            name: $name,
            content_type: $content_type,
            body: BODY,
            hash: fnv1a(BODY),
        }
    }};
}

/// Every script is an ES module; `text/javascript` is the type the HTML
/// standard names for them.
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// Every file of the dashboard. A file not listed here is not served, so a
/// stray file in the directory never leaks.
static ASSETS: [Asset; 14] = [
    asset!("", "index.html", "text/html; charset=utf-8"),
    asset!("style.css", "style.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "icon.svg", "image/svg+xml"),
    asset!("app.js", "app.js", JAVASCRIPT),
    asset!("api.js", "api.js", JAVASCRIPT),
    asset!("auth.js", "auth.js", JAVASCRIPT),
    asset!("signin.js", "signin.js", JAVASCRIPT),
    asset!("sse.js", "sse.js", JAVASCRIPT),
    asset!("dom.js", "dom.js", JAVASCRIPT),
    asset!("live.js", "live.js", JAVASCRIPT),
    asset!("tasks.js", "tasks.js", JAVASCRIPT),
    asset!("detail.js", "detail.js", JAVASCRIPT),
    asset!("create.js", "create.js", JAVASCRIPT),
    asset!("schedules.js", "schedules.js", JAVASCRIPT),
];

/// The dashboard's routes, to merge into the gateway's router.
pub fn routes() -> Router<Gateway> {
    Router::new()
        .route("/", get(page))
        .route("/dashboard/{*file}", get(file))
}

/// `GET /`: the page.
async fn page(headers: HeaderMap) -> Response {
    serve(&ASSETS[0], &headers)
}

/// `GET /dashboard/{file}`: one of the page's files, or `404` (the
/// gateway's JSON one) for any other name.
async fn file(Path(name): Path<String>, headers: HeaderMap, request: Request) -> Response {
    match ASSETS
        .iter()
        .find(|asset| !asset.name.is_empty() && asset.name == name)
    {
        Some(asset) => serve(asset, &headers),
        None => GatewayError::NoRoute {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
        }
        .into_response(),
    }
}

/// The asset, or `304` when the browser's copy (`If-None-Match`) is it.
fn serve(asset: &Asset, request_headers: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.hash);
    let unchanged = request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|candidate| {
            let candidate = candidate.trim();
            candidate == etag || candidate == "*" || candidate.strip_prefix("W/") == Some(&etag)
        });
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.body).into_response()
    };
    let headers = response.headers_mut();
    // The hash is hex digits in quotes: always a valid header value.
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// 64-bit FNV-1a: not cryptographic, only a fingerprint of a file the
/// binary itself carries, so that an `ETag` changes when the file does.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut index = 0;
    while index < bytes.len() {
        hash ^= bytes[index] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        index += 1;
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_name_is_unique_and_the_page_comes_first() {
        assert_eq!(ASSETS[0].name, "");
        assert!(ASSETS[0].content_type.starts_with("text/html"));
        let mut names: Vec<&str> = ASSETS.iter().map(|asset| asset.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ASSETS.len());
        assert!(ASSETS.iter().all(|asset| !asset.body.is_empty()));
    }

    #[test]
    fn a_matching_if_none_match_is_answered_304() {
        let asset = &ASSETS[1];
        let etag = format!("\"{:016x}\"", asset.hash);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"other\", {etag}")).expect("ascii"),
        );
        assert_eq!(serve(asset, &headers).status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            serve(asset, &HeaderMap::new()).status(),
            StatusCode::OK,
            "no If-None-Match"
        );
    }
}
