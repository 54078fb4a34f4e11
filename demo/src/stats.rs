//! What the demo watches: its own counters (bots, logins, matchmaking), the Matches'
//! phases (a watch on the API server), the GameFleet's status (polled), the game
//! servers' tick histograms (their Prometheus endpoints); the live line and the final
//! table.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tanks_operator::api::{GameFleet, Match, MatchPhase};

/// Counters bumped from many tasks, and the state behind the live line.
#[derive(Default)]
pub struct Stats {
    pub registered: AtomicU64,
    pub logins: AtomicU64,
    pub online: AtomicI64,
    pub in_game: AtomicI64,
    pub joined: AtomicU64,
    pub games_over: AtomicU64,
    pub published: AtomicU64,
    pub allocations_heard: AtomicU64,
    pub moves: AtomicU64,
    pub shots: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Current phase of every Match the watch knows.
    phases: HashMap<String, MatchPhase>,
    first_seen: HashMap<String, Instant>,
    published_at: HashMap<String, Instant>,
    allocated: HashSet<String>,
    played: HashSet<String>,
    finished: HashSet<String>,
    failed: HashSet<String>,
    alloc_latencies: Vec<Duration>,
    login_times: VecDeque<Instant>,
    peak_logins_per_sec: usize,
    peak_online: i64,
    fleet: FleetTrack,
    ticks: TickTrack,
    errors: BTreeMap<String, u64>,
}

#[derive(Default, Clone)]
pub struct FleetSample {
    pub desired: i32,
    pub ready: i32,
    pub allocated: i32,
}

#[derive(Default)]
struct FleetTrack {
    last: Option<FleetSample>,
    first_desired: Option<i32>,
    peak_desired: i32,
    peak_ready: i32,
    peak_allocated: i32,
    /// The lowest desired count seen after the peak was last raised.
    min_after_peak: Option<i32>,
}

/// Tick-duration histograms: per pod, the last cumulative buckets scraped; summed, the
/// deltas of the last scrape (the live p99) and of the whole run.
#[derive(Default)]
struct TickTrack {
    last_by_pod: HashMap<String, Vec<(f64, f64)>>,
    window: Vec<(f64, f64)>,
    total: Vec<(f64, f64)>,
    window_p99: Option<f64>,
    peak_window_p99: Option<f64>,
}

impl Stats {
    pub fn error(&self, kind: &str, detail: impl std::fmt::Display) {
        let mut inner = self.inner.lock().unwrap();
        let n = inner.errors.entry(kind.to_owned()).or_default();
        *n += 1;
        // The first few of each kind, in full; the rest only counted.
        if *n <= 3 {
            crate::say!("[demo] {kind}: {detail}");
        }
    }

    pub fn login(&self) {
        self.logins.fetch_add(1, Ordering::Relaxed);
        let online = self.online.fetch_add(1, Ordering::Relaxed) + 1;
        let mut inner = self.inner.lock().unwrap();
        inner.login_times.push_back(Instant::now());
        inner.peak_online = inner.peak_online.max(online);
    }

    pub fn published(&self, name: &str) {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.inner
            .lock()
            .unwrap()
            .published_at
            .insert(name.to_owned(), Instant::now());
    }

    /// One event from the Match watch.
    pub fn saw_match(&self, m: &Match) {
        let Some(name) = m.metadata.name.clone() else {
            return;
        };
        let now = Instant::now();
        let phase = m.phase();
        let mut inner = self.inner.lock().unwrap();
        let first = *inner.first_seen.entry(name.clone()).or_insert(now);
        if phase != MatchPhase::Pending && phase != MatchPhase::Failed {
            if inner.allocated.insert(name.clone()) {
                // Created -> Allocated as this watch saw it; when the first sight was
                // already allocated, from the matchmaker's publish instead.
                let start = if first < now {
                    first
                } else {
                    inner.published_at.get(&name).copied().unwrap_or(now)
                };
                inner.alloc_latencies.push(now - start);
            }
            let ran = m.status.as_ref().is_some_and(|s| s.running_at.is_some());
            if phase == MatchPhase::Running || ran {
                inner.played.insert(name.clone());
            }
        }
        match phase {
            MatchPhase::Finished => {
                inner.finished.insert(name.clone());
            }
            MatchPhase::Failed => {
                inner.failed.insert(name.clone());
            }
            _ => {}
        }
        inner.phases.insert(name, phase);
    }

    pub fn match_gone(&self, m: &Match) {
        if let Some(name) = &m.metadata.name {
            self.inner.lock().unwrap().phases.remove(name);
        }
    }

    pub fn saw_fleet(&self, fleet: &GameFleet) {
        let st = fleet.status.clone().unwrap_or_default();
        let sample = FleetSample {
            desired: st.desired_replicas,
            ready: st.ready_replicas,
            allocated: st.allocated_replicas,
        };
        let mut inner = self.inner.lock().unwrap();
        let track = &mut inner.fleet;
        if track.first_desired.is_none() && sample.desired > 0 {
            track.first_desired = Some(sample.desired);
        }
        if sample.desired > track.peak_desired {
            track.peak_desired = sample.desired;
            track.min_after_peak = Some(sample.desired);
        }
        track.min_after_peak = Some(
            track
                .min_after_peak
                .map_or(sample.desired, |m| m.min(sample.desired)),
        );
        track.peak_ready = track.peak_ready.max(sample.ready);
        track.peak_allocated = track.peak_allocated.max(sample.allocated);
        track.last = Some(sample);
    }

    /// One round of tick histograms, `(pod, cumulative buckets)`; pods missing from it
    /// are forgotten.
    pub fn saw_ticks(&self, scraped: Vec<(String, Vec<(f64, f64)>)>) {
        let mut inner = self.inner.lock().unwrap();
        let track = &mut inner.ticks;
        let mut window: Vec<(f64, f64)> = Vec::new();
        let mut seen = HashMap::new();
        for (pod, buckets) in scraped {
            let prev = track.last_by_pod.get(&pod);
            let delta: Vec<(f64, f64)> = buckets
                .iter()
                .map(|&(le, n)| {
                    let before = prev
                        .and_then(|p| p.iter().find(|(l, _)| *l == le))
                        .map_or(0.0, |(_, c)| *c);
                    (le, (n - before).max(0.0))
                })
                .collect();
            add_buckets(&mut window, &delta);
            seen.insert(pod, buckets);
        }
        track.last_by_pod = seen;
        add_buckets(&mut track.total, &window);
        track.window_p99 = quantile(&window, 0.99);
        if let Some(p) = track.window_p99 {
            track.peak_window_p99 = Some(track.peak_window_p99.map_or(p, |q: f64| q.max(p)));
        }
        track.window = window;
    }

    /// The live line.
    pub fn line(&self, elapsed: Duration) -> String {
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap();
        while inner
            .login_times
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(1))
        {
            inner.login_times.pop_front();
        }
        let per_sec = inner.login_times.len();
        inner.peak_logins_per_sec = inner.peak_logins_per_sec.max(per_sec);
        let count = |p: MatchPhase| inner.phases.values().filter(|x| **x == p).count();
        let fleet = inner.fleet.last.clone().unwrap_or_default();
        let (p50, p99) = percentiles(&inner.alloc_latencies);
        let tick = inner
            .ticks
            .window_p99
            .map_or("-".to_owned(), |t| format!("≤{}", ms(t)));
        let secs = elapsed.as_secs();
        format!(
            "[{:>2}:{:02}] fleet desired {:>2} ready {:>2} allocated {:>2} | matches pending {:>2} allocated {:>2} running {:>3} finished {:>4} failed {} | players online {:>4} in game {:>4} | logins/s {:>3} | alloc p50 {} p99 {} | tick p99 {}",
            secs / 60,
            secs % 60,
            fleet.desired,
            fleet.ready,
            fleet.allocated,
            count(MatchPhase::Pending),
            count(MatchPhase::Allocated),
            count(MatchPhase::Running),
            inner.finished.len(),
            inner.failed.len(),
            self.online.load(Ordering::Relaxed),
            self.in_game.load(Ordering::Relaxed),
            per_sec,
            p50.map_or("-".into(), |d| ms(d.as_secs_f64())),
            p99.map_or("-".into(), |d| ms(d.as_secs_f64())),
            tick,
        )
    }

    /// The final numbers, as JSON (the test reads this) and as a table.
    pub fn summary(&self, elapsed: Duration, players: usize) -> (Value, String) {
        let inner = self.inner.lock().unwrap();
        let (p50, p99) = percentiles(&inner.alloc_latencies);
        let max = inner.alloc_latencies.iter().max().copied();
        let f = &inner.fleet;
        let desired_end = f.last.as_ref().map_or(0, |s| s.desired);
        let tick_p99 = quantile(&inner.ticks.total, 0.99);
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        let value = json!({
            "seconds": elapsed.as_secs(),
            "players": players,
            "fleet": {
                "desired_start": f.first_desired,
                "desired_peak": f.peak_desired,
                "desired_min_after_peak": f.min_after_peak,
                "desired_end": desired_end,
                "ready_peak": f.peak_ready,
                "allocated_peak": f.peak_allocated,
            },
            "matches": {
                "published": self.published.load(Ordering::Relaxed),
                "allocations_heard": self.allocations_heard.load(Ordering::Relaxed),
                "allocated": inner.allocated.len(),
                "played": inner.played.len(),
                "finished": inner.finished.len(),
                "failed": inner.failed.len(),
            },
            "players_stats": {
                "registered": self.registered.load(Ordering::Relaxed),
                "logins": self.logins.load(Ordering::Relaxed),
                "peak_online": inner.peak_online,
                "peak_logins_per_sec": inner.peak_logins_per_sec,
                "joined": self.joined.load(Ordering::Relaxed),
                "games_over": self.games_over.load(Ordering::Relaxed),
                "moves": self.moves.load(Ordering::Relaxed),
                "shots": self.shots.load(Ordering::Relaxed),
            },
            "allocation_latency_seconds": {
                "samples": inner.alloc_latencies.len(),
                "p50": secs(p50), "p99": secs(p99), "max": secs(max),
            },
            "tick_p99_seconds": tick_p99,
            "tick_p99_peak_window_seconds": inner.ticks.peak_window_p99,
            "errors": inner.errors,
        });
        let d = |x: Option<Duration>| x.map_or("-".to_owned(), |d| ms(d.as_secs_f64()));
        let mut t = String::new();
        let mut row = |k: &str, v: String| t.push_str(&format!("  {k:<22} {v}\n"));
        row(
            "fleet servers desired",
            format!(
                "start {}, peak {}, end {}",
                f.first_desired.unwrap_or(0),
                f.peak_desired,
                desired_end
            ),
        );
        row(
            "fleet servers",
            format!(
                "peak ready {}, peak allocated {}",
                f.peak_ready, f.peak_allocated
            ),
        );
        row(
            "players",
            format!(
                "{} registered, {} logins, peak online {}, peak logins/s {}",
                self.registered.load(Ordering::Relaxed),
                self.logins.load(Ordering::Relaxed),
                inner.peak_online,
                inner.peak_logins_per_sec
            ),
        );
        row(
            "matches",
            format!(
                "{} published, {} allocated, {} played, {} finished, {} failed",
                self.published.load(Ordering::Relaxed),
                inner.allocated.len(),
                inner.played.len(),
                inner.finished.len(),
                inner.failed.len()
            ),
        );
        row(
            "games (bot side)",
            format!(
                "{} joins, {} game_over, {} moves, {} shots",
                self.joined.load(Ordering::Relaxed),
                self.games_over.load(Ordering::Relaxed),
                self.moves.load(Ordering::Relaxed),
                self.shots.load(Ordering::Relaxed)
            ),
        );
        row(
            "allocation latency",
            format!(
                "p50 {}, p99 {}, max {} ({} matches; Match seen → Allocated seen)",
                d(p50),
                d(p99),
                d(max),
                inner.alloc_latencies.len()
            ),
        );
        row(
            "tick p99",
            format!(
                "whole run {}, worst 2 s window {} (bucket bounds)",
                tick_p99.map_or("-".to_owned(), |t| format!("≤{}", ms(t))),
                inner
                    .ticks
                    .peak_window_p99
                    .map_or("-".to_owned(), |t| format!("≤{}", ms(t)))
            ),
        );
        let errors = if inner.errors.is_empty() {
            "none".to_owned()
        } else {
            inner
                .errors
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        row("errors", errors);
        (value, t)
    }
}

fn ms(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2}s")
    } else if seconds >= 0.01 {
        format!("{:.0}ms", seconds * 1000.0)
    } else {
        format!("{:.2}ms", seconds * 1000.0)
    }
}

fn percentiles(samples: &[Duration]) -> (Option<Duration>, Option<Duration>) {
    if samples.is_empty() {
        return (None, None);
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let at =
        |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1];
    (Some(at(0.5)), Some(at(0.99)))
}

fn add_buckets(into: &mut Vec<(f64, f64)>, add: &[(f64, f64)]) {
    for &(le, n) in add {
        match into.iter_mut().find(|(l, _)| *l == le) {
            Some((_, c)) => *c += n,
            None => into.push((le, n)),
        }
    }
    into.sort_by(|a, b| a.0.total_cmp(&b.0));
}

/// The upper bound of the bucket holding quantile `q` of cumulative buckets (`+Inf`
/// answers the largest finite bound).
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.iter().map(|(_, n)| *n).fold(0.0, f64::max);
    if total <= 0.0 {
        return None;
    }
    let finite_max = buckets
        .iter()
        .filter(|(le, _)| le.is_finite())
        .map(|(le, _)| *le)
        .fold(0.0, f64::max);
    buckets
        .iter()
        .find(|(_, n)| *n >= total * q)
        .map(|(le, _)| if le.is_finite() { *le } else { finite_max })
}

/// `gameserver_tick_duration_seconds_bucket{le="0.001"} 12` lines of a Prometheus text
/// page, as `(le, cumulative count)`.
pub fn tick_buckets(page: &str) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix("gameserver_tick_duration_seconds_bucket{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let le = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("le=\""))
            .and_then(|v| v.strip_suffix('"'));
        let le = match le {
            Some("+Inf") => f64::INFINITY,
            Some(v) => match v.parse() {
                Ok(v) => v,
                Err(_) => continue,
            },
            None => continue,
        };
        if let Ok(n) = value.trim().parse::<f64>() {
            out.push((le, n));
        }
    }
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_quantiles_come_from_cumulative_buckets() {
        let page = "# HELP x\ngameserver_tick_duration_seconds_bucket{le=\"0.001\"} 90\n\
                    gameserver_tick_duration_seconds_bucket{le=\"0.002\"} 99\n\
                    gameserver_tick_duration_seconds_bucket{le=\"0.005\"} 100\n\
                    gameserver_tick_duration_seconds_bucket{le=\"+Inf\"} 100\n";
        let b = tick_buckets(page);
        assert_eq!(b.len(), 4);
        assert_eq!(quantile(&b, 0.5), Some(0.001));
        assert_eq!(quantile(&b, 0.99), Some(0.002));
        assert_eq!(quantile(&[], 0.99), None);
    }

    #[test]
    fn percentiles_of_latencies() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let (p50, p99) = percentiles(&s);
        assert_eq!(p50, Some(Duration::from_millis(50)));
        assert_eq!(p99, Some(Duration::from_millis(99)));
    }
}
