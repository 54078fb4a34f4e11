//! Reading a process's Prometheus text: sums of series, and a histogram's p99 between
//! two scrapes.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /metrics` over plain HTTP; the body, or why not.
pub async fn scrape(addr: &str) -> Result<String, String> {
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("metrics {addr}: {e}"))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    conn.read_to_string(&mut text)
        .await
        .map_err(|e| e.to_string())?;
    Ok(text)
}

/// The sum of every series of `name` (exactly that name, any labels) whose labels
/// contain each of `having`.
pub fn sum(text: &str, name: &str, having: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && having.iter().all(|h| labels.contains(h)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Cumulative bucket counts of histogram `name`: (upper bound, count), ascending.
pub fn buckets(text: &str, name: &str) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{')?;
            if metric != bucket {
                return None;
            }
            let le = labels.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.parse().ok()?))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The upper bound of the bucket holding the 99th percentile of what was observed
/// between two scrapes, and how many observations that was.
pub fn p99_between(before: &[(f64, f64)], after: &[(f64, f64)]) -> (f64, f64) {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == le)
                .map(|(_, c)| *c)
                .unwrap_or(0.0);
            (*le, n - earlier)
        })
        .collect();
    let total = delta.last().map(|(_, n)| *n).unwrap_or(0.0);
    let bound = delta
        .iter()
        .find(|(_, n)| *n >= 0.99 * total)
        .map(|(le, _)| *le)
        .unwrap_or(f64::INFINITY);
    (bound, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_percentiles() {
        let text = "# HELP x\nx_total{topic=\"a\",reason=\"r\"} 2\nx_total{topic=\"b\",reason=\"r\"} 3\nx_total_other 9\n\
                    h_bucket{le=\"0.001\"} 90\nh_bucket{le=\"0.01\"} 99\nh_bucket{le=\"+Inf\"} 100\n";
        assert_eq!(sum(text, "x_total", &[]), 5.0);
        assert_eq!(sum(text, "x_total", &["topic=\"b\""]), 3.0);
        let after = buckets(text, "h");
        let before = vec![(0.001, 0.0), (0.01, 0.0), (f64::INFINITY, 0.0)];
        assert_eq!(p99_between(&before, &after), (0.01, 100.0));
    }
}
