//! The `/_mock/...` endpoints tests use to steer and inspect the mock. They are not
//! counted in the stats.

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::body::MockBody;
use crate::reply::control_json;
use crate::state::{FaultSpec, State};

const MAX_CONTROL_BODY: usize = 1024 * 1024;

fn ok() -> Response<MockBody> {
    control_json(StatusCode::OK, &json!({"ok": true}))
}

fn bad_request(message: String) -> Response<MockBody> {
    control_json(StatusCode::BAD_REQUEST, &json!({"error": message}))
}

/// `{"model": ..., "status": ..., ...}` or a list of them.
fn parse_faults(bytes: &[u8]) -> Result<Vec<FaultSpec>, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let specs: Vec<FaultSpec> = if value.is_array() {
        serde_json::from_value(value)
    } else {
        serde_json::from_value(value).map(|spec| vec![spec])
    }
    .map_err(|e| format!("invalid fault: {e}"))?;
    for spec in &specs {
        if !spec.drop && !(400..=599).contains(&spec.status) {
            return Err(format!("status must be 400..=599, got {}", spec.status));
        }
        if spec.count == Some(0) {
            return Err("count must be at least 1 (omit it for \"until cleared\")".to_owned());
        }
    }
    Ok(specs)
}

pub(crate) async fn handle(state: &State, request: Request<Incoming>) -> Response<MockBody> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    match (&parts.method, path) {
        (&Method::GET, "/_mock/stats") => control_json(StatusCode::OK, &state.stats()),
        (&Method::POST, "/_mock/reset") => {
            state.reset();
            ok()
        }
        (&Method::GET, "/_mock/faults") => control_json(StatusCode::OK, &state.faults.list()),
        (&Method::POST, "/_mock/faults") => {
            let bytes = match Limited::new(body, MAX_CONTROL_BODY).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => return bad_request(format!("reading the body: {e}")),
            };
            match parse_faults(&bytes) {
                Ok(specs) => {
                    for spec in specs {
                        state.faults.set(spec);
                    }
                    ok()
                }
                Err(message) => bad_request(message),
            }
        }
        (&Method::DELETE, "/_mock/faults") => {
            state.faults.clear();
            ok()
        }
        (&Method::GET, "/_mock/requests") => match &state.recorder {
            Some(recorder) => control_json(StatusCode::OK, &recorder.list()),
            None => control_json(
                StatusCode::NOT_FOUND,
                &json!({"error": "recording is off: start the mock with --record"}),
            ),
        },
        _ => control_json(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no control endpoint {} {path}", parts.method)}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_fault_or_a_list() {
        let one = parse_faults(br#"{"model": "gpt-4o", "status": 500, "count": 3}"#)
            .expect("valid fault");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].count, Some(3));
        let many = parse_faults(
            br#"[{"model": "a", "status": 429, "retry_after": 2}, {"model": "b", "drop": true}]"#,
        )
        .expect("valid faults");
        assert_eq!(many.len(), 2);
        assert!(many[1].drop);
        assert!(parse_faults(br#"{"model": "a", "status": 200}"#).is_err());
        assert!(parse_faults(br#"{"status": 500}"#).is_err());
        assert!(parse_faults(br#"{"model": "a", "count": 0}"#).is_err());
    }
}
