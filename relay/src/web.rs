//! The relay's HTTP server: `/metrics`, and share links (`links.rs`, format in
//! `weft_crypto::link`).
//!
//! Routes:
//! - `GET /s/{token}`: the viewer page (HTML + the bundled script), or an error page
//!   with its status: 404 unknown link, 410 expired, revoked or used up.
//! - `GET /s/{token}/record`: the sealed record, with header `X-Weft-Access` (the
//!   access token, base64url); 403 for a wrong one (a wrong password). Counts a
//!   download.
//! - `GET /s/{token}/c/{chunk id}`: one of the link's chunks, same header.
//! - `GET /assets/app.js`: the viewer script, built from `relay/web/` with
//!   `npm run build` and committed as `relay/web/dist/app.js`, embedded here so that
//!   building the relay needs no Node.
//!
//! The key lives in the URL's fragment, which browsers never send: the server sees
//! the token, the access token (a one-way function of key and password) and nothing
//! else. Every request is appended to `access.log` in the data directory (time,
//! method, path, status), so what the relay saw can be checked: a test greps it and
//! the whole data directory for the key.
//!
//! The page is served with a strict Content-Security-Policy (only its own script, no
//! inline script, data fetched only from this origin, content shown only from `blob:`
//! URLs) and `Referrer-Policy: no-referrer`.
use crate::links::LinkError;
use crate::server::Metrics;
use crate::storage::RelayStore;
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::io::Write;
use std::sync::{Arc, Mutex};
use weft_crypto::ChunkId;
use weft_crypto::link::{LinkToken, decode_access};

/// The viewer script (see the module docs).
const APP_JS: &str = include_str!("../web/dist/app.js");

#[derive(Clone)]
struct Web {
    store: Arc<RelayStore>,
    metrics: Arc<Metrics>,
    log: Arc<Mutex<Option<std::fs::File>>>,
}

/// The router: metrics and share links, with the access log.
pub fn router(store: Arc<RelayStore>, metrics: Arc<Metrics>, data: &std::path::Path) -> Router {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join("access.log"))
        .map_err(|e| tracing::warn!("cannot open access.log: {e}"))
        .ok();
    let web = Web {
        store,
        metrics,
        log: Arc::new(Mutex::new(log)),
    };
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/assets/app.js", get(app_js))
        .route("/s/{token}", get(page))
        .route("/s/{token}/record", get(record))
        .route("/s/{token}/c/{id}", get(chunk))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            web.clone(),
            access_log,
        ))
        .with_state(web)
}

async fn access_log(State(web): State<Web>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    // The path only: a query string is not logged (none is used), and the fragment
    // never reaches a server.
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let now = crate::storage::now_ms();
    if let Ok(mut f) = web.log.lock()
        && let Some(f) = f.as_mut()
    {
        let _ = writeln!(f, "{now} {method} {path} {status}");
    }
    resp
}

async fn metrics_page(State(web): State<Web>) -> String {
    tokio::task::spawn_blocking(move || web.metrics.render(&web.store))
        .await
        .unwrap_or_default()
}

async fn app_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
        .into_response()
}

async fn not_found() -> Response {
    error_page(LinkError::Unknown)
}

const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self' blob:; \
    img-src blob:; media-src blob:; frame-src blob:; object-src blob:; \
    style-src 'unsafe-inline'; form-action 'none'; base-uri 'none'";

fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}\
    pre{white-space:pre-wrap;background:#f6f6f6;padding:1rem;border-radius:4px}\
    img{max-width:100%}iframe{width:100%;height:80vh;border:1px solid #ccc}\
    .error{color:#a00}li{margin:.2rem 0}button{font-size:1rem}";

/// The page for a link that cannot be opened, with its status.
fn error_page(e: LinkError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (title, detail) = match &e {
        LinkError::Unknown | LinkError::NoChunk => (
            "Link not found",
            "There is no such link on this relay. Check that you copied the whole address.",
        ),
        LinkError::Expired => (
            "This link has expired",
            "Ask the person who shared it for a new link.",
        ),
        LinkError::Revoked => (
            "This link was revoked",
            "The person who shared it has withdrawn it.",
        ),
        LinkError::LimitReached => (
            "This link has reached its download limit",
            "It was opened as many times as its creator allowed.",
        ),
        LinkError::WrongPassword => ("Wrong password", "The password is not right."),
        LinkError::Storage(err) => {
            tracing::warn!("share link: {err}");
            (
                "Something went wrong",
                "The relay could not read this link.",
            )
        }
    };
    let kind = match &e {
        LinkError::Unknown | LinkError::NoChunk => "unknown",
        LinkError::Expired => "expired",
        LinkError::Revoked => "revoked",
        LinkError::LimitReached => "limit",
        LinkError::WrongPassword => "password",
        LinkError::Storage(_) => "error",
    };
    html(
        status,
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title} · weft</title>\
             <style>{STYLE}</style></head><body><h1 id=\"error\" data-error=\"{kind}\" \
             data-status=\"{}\">{title}</h1><p>{detail}</p></body></html>",
            status.as_u16()
        ),
    )
}

fn token_of(s: &str) -> Result<[u8; 16], LinkError> {
    LinkToken::decode(s)
        .map(|t| t.0)
        .map_err(|_| LinkError::Unknown)
}

fn access_of(h: &HeaderMap) -> Option<[u8; 32]> {
    h.get("x-weft-access")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| decode_access(s).ok())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LinkError> + Send + 'static,
) -> Result<T, LinkError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(LinkError::Storage(crate::storage::RelayError::Db(
            e.to_string(),
        )))
    })
}

async fn page(State(web): State<Web>, Path(token): Path<String>) -> Response {
    let r = match token_of(&token) {
        Ok(t) => blocking(move || web.store.link_status(&t)).await,
        Err(e) => Err(e),
    };
    match r {
        Ok(_) => html(
            StatusCode::OK,
            format!(
                "<!doctype html><html><head><meta charset=\"utf-8\">\
                 <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
                 <title>Shared with weft</title><style>{STYLE}</style></head><body>\
                 <h1 id=\"title\">Shared with weft</h1>\
                 <p id=\"status\" data-state=\"loading\">Decrypting…</p>\
                 <form id=\"password-form\" hidden><label>This link needs a password: \
                 <input id=\"password\" type=\"password\" autocomplete=\"off\"></label> \
                 <button id=\"unlock\" type=\"submit\">Open</button></form>\
                 <nav id=\"listing\"></nav><div id=\"content\"></div>\
                 <noscript>This page decrypts the shared file in your browser and needs \
                 JavaScript; or use <code>weft get URL</code>.</noscript>\
                 <script src=\"/assets/app.js\"></script></body></html>"
            ),
        ),
        Err(e) => error_page(e),
    }
}

fn bytes_response(b: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        b,
    )
        .into_response()
}

async fn record(State(web): State<Web>, Path(token): Path<String>, h: HeaderMap) -> Response {
    let access = access_of(&h);
    let r = match token_of(&token) {
        Ok(t) => blocking(move || web.store.link_record(&t, access.as_ref())).await,
        Err(e) => Err(e),
    };
    match r {
        Ok(b) => bytes_response(b),
        Err(e) => error_page(e),
    }
}

async fn chunk(
    State(web): State<Web>,
    Path((token, id)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    let access = access_of(&h);
    let r = match (token_of(&token), id.parse::<ChunkId>()) {
        (Ok(t), Ok(id)) => blocking(move || web.store.link_chunk(&t, access.as_ref(), &id)).await,
        (Err(e), _) => Err(e),
        (_, Err(_)) => Err(LinkError::NoChunk),
    };
    match r {
        Ok(b) => bytes_response(b),
        Err(e) => error_page(e),
    }
}
