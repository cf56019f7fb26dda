//! The HTTP/1.1 + JSON API on a unix socket (axum + hyper), with SO_PEERCRED checks.

use crate::controller::{Controller, LookupError, StartError, StopError};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::UnixListener;
use torpor_api::AppState;
use torpor_api::{self as api, paths};
use tracing::{debug, warn};

/// A failure as the API answers it: an HTTP status, a stable code, a message. The statuses
/// are chosen here, from the controller's typed errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<LookupError> for ApiError {
    fn from(e: LookupError) -> Self {
        match e {
            LookupError::InvalidName(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
            }
            LookupError::Unknown(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_app", e.to_string())
            }
        }
    }
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        let status = match &e {
            StartError::Lookup(l) => return l.clone().into(),
            StartError::BadMode(_) => {
                return ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
            }
            // Left stopped: nothing of the app runs (500); else it is there, not ready (503).
            StartError::Failed {
                left: AppState::Stopped,
                ..
            } => StatusCode::INTERNAL_SERVER_ERROR,
            StartError::Failed { .. } | StartError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, "start_failed", e.to_string())
    }
}

impl From<StopError> for ApiError {
    fn from(e: StopError) -> Self {
        match e {
            StopError::Lookup(l) => l.into(),
            StopError::BadRequest(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m),
            StopError::Failed(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "stop_failed", m)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.status;
        (
            code,
            Json(api::ErrorBody {
                error: api::ErrorDetail {
                    code: self.code.to_string(),
                    message: self.message,
                },
            }),
        )
            .into_response()
    }
}

type Ctl = Arc<Controller>;

async fn blocking<T: Send + 'static, E: Into<ApiError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("worker failed: {e}"),
            )
        })?
        .map_err(Into::into)
}

async fn health(State(c): State<Ctl>) -> Json<api::Health> {
    let age = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0))
    .saturating_sub(c.last_tick.load(Ordering::Relaxed));
    Json(api::Health {
        status: "ok".into(),
        pool_ready: c.pool_ready.load(Ordering::Relaxed),
        apps: c.app_names().len(),
        backend: c.backend_name().to_string(),
        backend_why: c.backend_why.clone(),
        cgroups: c.layout.describe(),
        uptime_s: c.uptime().as_secs_f64(),
        last_tick_age_s: age,
        reserve_bytes: c.cfg.reserve,
        mem_available_bytes: procswap::sys::meminfo().map(|m| m.mem_available).ok(),
        host_overload: c.host_overload(),
    })
}

async fn apps(State(c): State<Ctl>) -> Result<Json<api::AppList>, ApiError> {
    let apps = blocking(move || Ok::<_, ApiError>(c.all_status())).await?;
    Ok(Json(api::AppList { apps }))
}

async fn app(
    State(c): State<Ctl>,
    Path(name): Path<String>,
) -> Result<Json<api::AppStatus>, ApiError> {
    Ok(Json(blocking(move || c.app_status(&name)).await?))
}

async fn start(
    State(c): State<Ctl>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<api::StartAnswer>, ApiError> {
    let req = parse_start_request(&body)?;
    Ok(Json(blocking(move || c.start_with(&name, &req)).await?))
}

async fn stop(
    State(c): State<Ctl>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<api::StopAnswer>, ApiError> {
    let req = parse_stop_request(&body)?;
    Ok(Json(blocking(move || c.stop_with(&name, &req)).await?))
}

/// The optional body of a Stop (empty = the app's configured purge method); a malformed body
/// is a 400 `bad_request`.
pub fn parse_stop_request(body: &[u8]) -> Result<api::StopRequest, ApiError> {
    let names: Vec<&str> = api::PurgeMethod::ALL.iter().map(|m| m.as_str()).collect();
    parse_optional_body(body, "stop", &one_of("purge", &names))
}

/// The optional body of a Start (empty = no override); a malformed body is a 400
/// `bad_request`.
pub fn parse_start_request(body: &[u8]) -> Result<api::StartRequest, ApiError> {
    parse_optional_body(
        body,
        "start",
        &one_of("prefetch", &crate::config::start_prefetch_names()),
    )
}

/// The shape of a body with one optional key among `names`: `{"key": "a"|"b"}` (the names come
/// from the modes' own enums, so the message cannot fall behind them).
fn one_of(key: &str, names: &[&str]) -> String {
    let alts: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("{{\"{key}\": {}}}", alts.join("|"))
}

/// A request body that may be empty (all whitespace: `T::default()`); malformed JSON is a 400
/// `bad_request` naming the request (`what`) and the shape expected.
fn parse_optional_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
    what: &str,
    expected: &str,
) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{what} body: {e} (expected {expected})"),
        )
    })
}

#[derive(serde::Deserialize)]
struct Since {
    since: Option<u64>,
}

async fn events(State(c): State<Ctl>, Query(q): Query<Since>) -> Json<api::EventList> {
    Json(api::EventList {
        events: c.events(q.since.unwrap_or(0)),
    })
}

async fn metrics(State(c): State<Ctl>) -> Result<Response, ApiError> {
    let body = blocking(move || Ok::<_, ApiError>(c.metrics())).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint (see GET /v1/apps, /v1/health, /metrics)",
    )
}

async fn forbidden() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "peer is neither root nor in the configured socket group",
    )
}

/// The API router.
pub fn router(c: Ctl) -> Router {
    Router::new()
        .route(paths::HEALTH, get(health))
        .route(paths::APPS, get(apps))
        .route(&paths::app("{name}"), get(app))
        .route(&paths::start("{name}"), post(start))
        .route(&paths::stop("{name}"), post(stop))
        .route(paths::EVENTS, get(events))
        .route(paths::METRICS, get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "wrong method for this endpoint",
            )
        })
        .with_state(c)
}

/// Is this peer allowed? root, the group's gid as primary group, or (from /proc) as a
/// supplementary group.
pub fn peer_allowed(uid: u32, gid: u32, pid: Option<i32>, group: Option<u32>) -> bool {
    if uid == 0 {
        return true;
    }
    let Some(g) = group else { return false };
    if gid == g {
        return true;
    }
    let Some(pid) = pid else { return false };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Groups:")
                    .map(|v| v.split_whitespace().any(|x| x.parse() == Ok(g)))
            })
        })
        .unwrap_or(false)
}

/// Accept connections forever.
pub async fn serve(listener: UnixListener, c: Ctl, group: Option<u32>) {
    let ok = router(c);
    let denied = Router::new().fallback(forbidden);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let allowed = match stream.peer_cred() {
            Ok(cred) => {
                let a = peer_allowed(cred.uid(), cred.gid(), cred.pid(), group);
                if !a {
                    warn!(uid = cred.uid(), gid = cred.gid(), pid = ?cred.pid(), "API peer refused (403)");
                }
                a
            }
            Err(e) => {
                warn!("SO_PEERCRED: {e}; refusing");
                false
            }
        };
        let svc = TowerToHyperService::new(if allowed { ok.clone() } else { denied.clone() });
        tokio::spawn(async move {
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!("connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_chosen_at_the_edge() {
        let st = |e: ApiError| (e.status.as_u16(), e.code);
        assert_eq!(
            st(LookupError::InvalidName("a b".into()).into()),
            (400, "bad_request")
        );
        assert_eq!(
            st(LookupError::Unknown("x".into()).into()),
            (404, "unknown_app")
        );
        assert_eq!(
            st(StartError::Lookup(LookupError::Unknown("x".into())).into()),
            (404, "unknown_app")
        );
        assert_eq!(
            st(StartError::BadMode("m".into()).into()),
            (400, "bad_request")
        );
        assert_eq!(
            st(StartError::NotReady("p".into()).into()),
            (503, "start_failed")
        );
        let failed = |left| StartError::Failed {
            message: "m".into(),
            left,
        };
        assert_eq!(st(failed(AppState::Stopped).into()), (500, "start_failed"));
        assert_eq!(st(failed(AppState::Standby).into()), (503, "start_failed"));
        assert_eq!(st(failed(AppState::Running).into()), (503, "start_failed"));
        assert_eq!(
            st(StopError::Failed("f".into()).into()),
            (500, "stop_failed")
        );
        let e: ApiError = StartError::NotReady("p".into()).into();
        assert_eq!(e.message, "app is running but not ready: p");
    }

    #[test]
    fn peers() {
        assert!(super::peer_allowed(0, 0, None, None));
        assert!(!super::peer_allowed(1000, 1000, None, None));
        assert!(super::peer_allowed(1000, 4242, None, Some(4242)));
        assert!(!super::peer_allowed(1000, 1000, None, Some(4242)));
    }

    #[test]
    fn stop_request_body() {
        use super::parse_stop_request as parse;
        use torpor_api::{PurgeMethod, StopRequest};
        assert_eq!(parse(b"").unwrap(), StopRequest::default());
        assert_eq!(parse(b" \n").unwrap(), StopRequest::default());
        assert_eq!(parse(b"{}").unwrap(), StopRequest::default());
        assert_eq!(
            parse(br#"{"purge":"kernel"}"#).unwrap().purge,
            Some(PurgeMethod::Kernel)
        );
        assert_eq!(
            parse(br#"{"purge":"ordered"}"#).unwrap().purge,
            Some(PurgeMethod::Ordered)
        );
        for bad in [
            &br#"{"purge":"stock"}"#[..],
            br#"{"purge":1}"#,
            br#"{"purg":"kernel"}"#,
            b"kernel",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!((e.status.as_u16(), e.code), (400, "bad_request"));
            assert!(e.message.starts_with("stop body: "), "{}", e.message);
            assert!(
                e.message
                    .ends_with(r#"(expected {"purge": "ordered"|"kernel"})"#),
                "{}",
                e.message
            );
        }
        let st = |e: ApiError| (e.status.as_u16(), e.code);
        assert_eq!(
            st(StopError::BadRequest("b".into()).into()),
            (400, "bad_request")
        );
    }

    #[test]
    fn start_request_body() {
        use super::parse_start_request as parse;
        use torpor_api::StartRequest;
        assert_eq!(parse(b"").unwrap(), StartRequest::default());
        assert_eq!(parse(b" \r\n").unwrap(), StartRequest::default());
        assert_eq!(parse(b"{}").unwrap(), StartRequest::default());
        assert_eq!(
            parse(br#"{"prefetch":"none"}"#)
                .unwrap()
                .prefetch
                .as_deref(),
            Some("none")
        );
        for bad in [
            &b"{"[..],
            br#"{"prefetch":1}"#,
            br#"{"prefech":"none"}"#,
            b"none",
            b"\"full\"",
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.code),
                (400, "bad_request"),
                "{}",
                String::from_utf8_lossy(bad)
            );
            // Every mode a Start accepts is named, the default (loading-set) too.
            assert!(
                e.message.ends_with(
                    r#"(expected {"prefetch": "loading-set"|"full"|"working-set-only"|"none"|"priority"})"#
                ),
                "{}",
                e.message
            );
        }
    }
}
