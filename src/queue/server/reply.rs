//! Response shapes of the frontend's `wrapHandler`: 200 JSON, 204 empty, 400 text
//! "Failed to unmarshal payload: …", 500 `{"error": …}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Boxed so `Result<_, Reply>` stays small.
pub type Reply = Box<Response>;

pub fn empty(status: StatusCode) -> Reply {
    Box::new(status.into_response())
}

pub fn text(status: StatusCode, body: &str) -> Reply {
    Box::new((status, body.to_string()).into_response())
}

pub fn json<T: Serialize>(value: &T) -> Reply {
    Box::new((StatusCode::OK, Json(value)).into_response())
}

pub fn error_json(status: StatusCode, message: &str) -> Reply {
    Box::new((status, Json(serde_json::json!({ "error": message }))).into_response())
}

pub fn internal(message: impl std::fmt::Display) -> Reply {
    error_json(StatusCode::INTERNAL_SERVER_ERROR, &message.to_string())
}

/// Decodes a JSON body or answers 400 as the original does.
pub fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| {
        text(
            StatusCode::BAD_REQUEST,
            &format!("Failed to unmarshal payload: {e}"),
        )
    })
}
