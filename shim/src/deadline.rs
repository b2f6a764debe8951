//! When a call must answer: the client's `grpc-timeout` header, a request's own `timeout`
//! field, and the margin a checkpoint keeps back so the caller hears the runtime's
//! `DEADLINE_EXCEEDED` rather than its own timer.

use std::time::{Duration, Instant};

/// The deadline a client set with the `grpc-timeout` header, as an instant.
pub fn grpc_deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    parse_grpc_timeout(v).map(|d| Instant::now() + d)
}

/// Parses a `grpc-timeout` value (at most 8 digits and a unit: H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The earlier of the gRPC deadline and a request's `timeout` field (seconds; 0 = none).
pub fn effective_deadline(grpc: Option<Instant>, timeout_secs: i64) -> Option<Instant> {
    let field =
        (timeout_secs > 0).then(|| Instant::now() + Duration::from_secs(timeout_secs as u64));
    match (grpc, field) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Time kept back from the deadline for the answer to reach the client.
const ANSWER_MARGIN: Duration = Duration::from_millis(50);

/// The instant a checkpoint must answer by: the earlier of the gRPC deadline and the
/// request's `timeout` field (seconds; 0 = none), less a margin for the answer to travel, so
/// the caller hears the runtime's `DEADLINE_EXCEEDED` rather than its own timer.
pub fn answer_deadline(grpc: Option<Instant>, timeout_secs: i64) -> Option<Instant> {
    effective_deadline(grpc, timeout_secs).map(|d| d.checked_sub(ANSWER_MARGIN).unwrap_or(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }

    #[test]
    fn the_earlier_deadline_wins() {
        let soon = Instant::now() + Duration::from_millis(100);
        let d = effective_deadline(Some(soon), 60).unwrap();
        assert_eq!(d, soon);
        let d = effective_deadline(None, 2).unwrap();
        assert!(d > Instant::now() + Duration::from_secs(1));
        assert!(effective_deadline(None, 0).is_none());
    }
}
