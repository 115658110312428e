//! Why a request got no decision, and the one place that maps it: to a gRPC status, an HTTP
//! status (`/json`) and the request metrics' result.

use thiserror::Error;
use tonic::Status;

use super::request::RequestError;
use crate::store::StoreError;
use crate::telemetry::RequestResult;

/// A request that could not be decided.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The request is malformed or over a cap.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The store could not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No config has been loaded yet (started without one, as the reference's
    /// FORCE_START_WITHOUT_INITIAL_CONFIG allows).
    #[error("no rate limit configuration loaded")]
    NoConfig,
}

impl ServiceError {
    /// How the request is counted in the request metrics.
    pub const fn request_result(&self) -> RequestResult {
        match self {
            ServiceError::Request(_) => RequestResult::InvalidArgument,
            ServiceError::Store(_) | ServiceError::NoConfig => RequestResult::Unavailable,
        }
    }

    /// The HTTP status that says the same as the gRPC one (for `/json`): 400 for a request to
    /// fix, 503 for one to retry.
    pub fn http_status(&self) -> http::StatusCode {
        match self {
            ServiceError::Request(_) => http::StatusCode::BAD_REQUEST,
            ServiceError::Store(_) | ServiceError::NoConfig => {
                http::StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        match error {
            // The caller must fix the request; retrying cannot help.
            ServiceError::Request(e) => Status::invalid_argument(e.to_string()),
            // UNAVAILABLE (not INTERNAL) so that Envoy's failure_mode_deny decides whether
            // traffic passes while the store is down, as with the reference.
            ServiceError::Store(e) => Status::unavailable(e.to_string()),
            // Retrying helps once a config is loaded; until then, Envoy's failure mode decides.
            ServiceError::NoConfig => Status::unavailable(error.to_string()),
        }
    }
}
