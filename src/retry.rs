//! Waiting before trying again: random numbers for jitter, exponential backoff, and the
//! server's own `Retry-After`.

use std::time::{Duration, Instant};

/// A random number (from the standard library's per-instance hasher keys and the clock): for
/// spreading retries and sampling, never for secrets.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// A random fraction in [0, 1), in millionths.
pub fn fraction() -> f64 {
    (random_u64() % 1_000_000) as f64 / 1_000_000.0
}

/// A few random milliseconds (0 to 999), for spreading retries.
pub fn jitter_ms() -> u64 {
    random_u64() % 1000
}

/// Exponential backoff with full jitter: attempt 1 waits about `initial`, each further attempt
/// twice as long, capped at `max`; the wait is uniform in [cap/2, cap].
pub fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.min(16).saturating_sub(1));
    let cap = exp.min(max);
    let nanos = cap.as_nanos() as u64;
    let jitter = random_u64() % (nanos / 2 + 1);
    Duration::from_nanos(nanos / 2 + jitter)
}

/// A `Retry-After` header: seconds, or an HTTP date (a date in the past is no wait).
pub fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    Some(match v.parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => {
            let t = httpdate::parse_http_date(v).ok()?;
            t.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let (i, m) = (Duration::from_millis(200), Duration::from_secs(10));
        for _ in 0..100 {
            let first = backoff(i, m, 1);
            assert!(first >= i / 2 && first <= i, "{first:?}");
            let late = backoff(i, m, 30);
            assert!(late >= m / 2 && late <= m, "{late:?}");
        }
        assert!((0.0..1.0).contains(&fraction()));
    }
}
