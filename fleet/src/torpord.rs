//! torpord's typed API (torpor-api) over its unix socket, through the CLI's transport
//! (`local_controller::client`), from async code.

use local_controller::client::{request, ClientError};
use serde::de::DeserializeOwned;
use std::path::PathBuf;
use std::time::Duration;
use torpor_api::{paths, AppList, Health, StartAnswer, StopAnswer};

#[derive(Debug, thiserror::Error)]
pub enum TorpordError {
    #[error(transparent)]
    Transport(#[from] ClientError),
    #[error("torpord answered {status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("torpord call did not finish: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// One torpord, by its socket.
#[derive(Debug, Clone)]
pub struct Torpord {
    pub socket: PathBuf,
    /// Bound on reads (health, apps).
    pub read_timeout: Duration,
    /// Bound on a Start or Stop (they include readiness probes and purges).
    pub op_timeout: Duration,
}

impl Torpord {
    pub fn new(socket: PathBuf) -> Torpord {
        Torpord {
            socket,
            read_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(600),
        }
    }

    async fn call<T: DeserializeOwned + Send + 'static>(
        &self,
        method: &'static str,
        path: String,
        timeout: Duration,
    ) -> Result<T, TorpordError> {
        let sock = self.socket.clone();
        let r = tokio::task::spawn_blocking(move || request(&sock, method, &path, None, timeout))
            .await??;
        if r.ok() {
            return Ok(r.parse()?);
        }
        let (code, message) = match r.error() {
            Some(e) => (e.code, e.message),
            None => (
                "no_error_body".into(),
                String::from_utf8_lossy(&r.body).into_owned(),
            ),
        };
        Err(TorpordError::Api {
            status: r.status,
            code,
            message,
        })
    }

    pub async fn health(&self) -> Result<Health, TorpordError> {
        self.call("GET", paths::HEALTH.into(), self.read_timeout)
            .await
    }

    pub async fn apps(&self) -> Result<AppList, TorpordError> {
        self.call("GET", paths::APPS.into(), self.read_timeout)
            .await
    }

    pub async fn start(&self, app: &str) -> Result<StartAnswer, TorpordError> {
        self.call("POST", paths::start(app), self.op_timeout).await
    }

    pub async fn stop(&self, app: &str) -> Result<StopAnswer, TorpordError> {
        self.call("POST", paths::stop(app), self.op_timeout).await
    }
}
