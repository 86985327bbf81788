//! Rate limits at the edges (DESIGN.md §8; MIMI.md §5.1 "target provider checks: ... rate
//! limits", §11 and §13 on KeyPackage exhaustion): per requesting peer provider on the
//! server-to-server API, per authenticated user on the client API, and on KeyPackage claims
//! (protocol-06 §5.1) per (requester, target) pair and per target across requesters, so that
//! nobody can drain a user's KeyPackages.
//!
//! Two parts:
//! - [`RateLimiter`], the sans-IO core: token buckets keyed by a string, refilled from the `now`
//!   the caller passes in, with at most `max_keys` buckets (the least recently used is evicted
//!   first). It reads no clock, spawns nothing and iterates only `BTreeMap`s, so equal inputs
//!   give equal decisions.
//! - [`RateLimits`], the shell the APIs call: one limiter per limit behind a mutex, the clock,
//!   and the 429 refusal (`Retry-After` in whole seconds, at least 1, a specific reason and the
//!   `mimid_limit_hits_total{limit}` label).
//!
//! Checks run after authentication and before anything is proposed to Raft, so a refused
//! request leaves no trace in replicated state. The state is per node and in memory: a cluster
//! of N nodes admits up to N times the configured rate, and a restart forgets every bucket.
//! That is the usual choice for rate limits; replicating them would cost a Raft write per
//! request, which is what they protect.
//!
//! What a limiter deliberately does not do: remember a key it evicted. An evicted bucket comes
//! back full, so eviction can only favour the caller; `limits.rate.max_tracked_keys` is sized
//! so that evicting a busy key takes more distinct keys than one party controls within a
//! refill period.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use http::StatusCode;
use mimid_actors::ids::UserId;
use parking_lot::Mutex;

use crate::api::Refusal;
use crate::config::RateLimitSettings;
use crate::metrics::Limit;

/// How fast a bucket refills and how many tokens it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second; finite and positive.
    pub per_sec: f64,
    /// Capacity: the requests admitted at once after a quiet period; at least 1.
    pub burst: f64,
}

impl Rate {
    /// `per_hour` tokens per hour with a burst of as many.
    pub fn per_hour(per_hour: u64) -> Rate {
        Rate {
            per_sec: per_hour as f64 / SECS_PER_HOUR,
            burst: per_hour as f64,
        }
    }

    fn assert_valid(&self) {
        assert!(
            self.per_sec.is_finite() && self.per_sec > 0.0,
            "refill rate must be finite and positive: {}",
            self.per_sec
        );
        assert!(
            self.burst.is_finite() && self.burst >= 1.0,
            "burst must admit at least one request: {}",
            self.burst
        );
    }
}

/// A limiter's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A token was taken: go ahead.
    Allowed,
    /// No token: the next one is there after `retry_after` (whole seconds, at least 1).
    Limited {
        /// When to retry, for `Retry-After` (RFC 9110 §10.2.3).
        retry_after: Duration,
    },
}

/// Token buckets keyed by a string (a peer domain, a user URI, a pair of them).
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    max_keys: usize,
    buckets: BTreeMap<String, Bucket>,
    /// Use stamp -> key, oldest first: the eviction order.
    recency: BTreeMap<u64, String>,
    /// The next use stamp; increases on every request.
    next_stamp: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
    stamp: u64,
}

impl RateLimiter {
    /// A limiter admitting `rate` per key, tracking at most `max_keys` keys.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use mimid_node::rate_limit::{Decision, Rate, RateLimiter};
    ///
    /// let mut limiter = RateLimiter::new(Rate { per_sec: 1.0, burst: 2.0 }, 100);
    /// let t0 = Instant::now();
    /// assert_eq!(limiter.handle_request("b.example", t0), Decision::Allowed);
    /// assert_eq!(limiter.handle_request("b.example", t0), Decision::Allowed);
    /// assert_eq!(
    ///     limiter.handle_request("b.example", t0),
    ///     Decision::Limited { retry_after: Duration::from_secs(1) }
    /// );
    /// assert_eq!(limiter.handle_request("c.example", t0), Decision::Allowed);
    /// assert_eq!(limiter.handle_request("b.example", t0 + Duration::from_secs(1)), Decision::Allowed);
    /// ```
    pub fn new(rate: Rate, max_keys: usize) -> RateLimiter {
        rate.assert_valid();
        assert!(max_keys >= 1, "a limiter tracks at least one key");
        RateLimiter {
            rate,
            max_keys,
            buckets: BTreeMap::new(),
            recency: BTreeMap::new(),
            next_stamp: 0,
        }
    }

    /// One request of `key` at `now`: takes a token if there is one. A key seen for the first
    /// time (or again after its eviction) starts with a full bucket. `now` earlier than a
    /// previous `now` refills nothing.
    pub fn handle_request(&mut self, key: &str, now: Instant) -> Decision {
        let bucket = self.touch(key, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Decision::Allowed;
        }
        let deficit = 1.0 - bucket.tokens;
        Decision::Limited {
            retry_after: retry_after(deficit, self.rate.per_sec),
        }
    }

    /// Gives back the token a request of `key` took, when a later check refused the request
    /// after all (so a refused request costs nothing). Never exceeds the burst; a key evicted in
    /// between is left alone.
    pub fn handle_refund(&mut self, key: &str) {
        if let Some(bucket) = self.buckets.get_mut(key) {
            bucket.tokens = (bucket.tokens + 1.0).min(self.rate.burst);
        }
    }

    /// Tokens `key` has at `now`, without taking one; `None` for a key not tracked.
    pub fn tokens(&self, key: &str, now: Instant) -> Option<f64> {
        self.buckets
            .get(key)
            .map(|bucket| refilled(bucket, self.rate, now))
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        debug_assert_eq!(self.buckets.len(), self.recency.len());
        self.buckets.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bucket of `key`, refilled to `now` and marked most recently used; created (after
    /// evicting the least recently used key if the limiter is full) when absent.
    fn touch(&mut self, key: &str, now: Instant) -> &mut Bucket {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if let Some(bucket) = self.buckets.get_mut(key) {
            let old = self.recency.remove(&bucket.stamp);
            debug_assert_eq!(old.as_deref(), Some(key));
            bucket.tokens = refilled(bucket, self.rate, now);
            bucket.refilled_at = bucket.refilled_at.max(now);
            bucket.stamp = stamp;
            self.recency.insert(stamp, key.to_owned());
            return self.buckets.get_mut(key).expect("present: just updated");
        }
        if self.buckets.len() >= self.max_keys {
            let (_, oldest) = self
                .recency
                .pop_first()
                .expect("a full limiter tracks at least one key");
            self.buckets.remove(&oldest);
        }
        assert!(self.buckets.len() < self.max_keys);
        self.recency.insert(stamp, key.to_owned());
        self.buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.rate.burst,
            refilled_at: now,
            stamp,
        })
    }
}

/// The tokens of `bucket` at `now`: what it had plus the refill since, up to the burst.
fn refilled(bucket: &Bucket, rate: Rate, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.refilled_at);
    (bucket.tokens + elapsed.as_secs_f64() * rate.per_sec).min(rate.burst)
}

/// Time until `deficit` tokens have been refilled at `per_sec`, in whole seconds rounded up
/// and at least 1 (`Retry-After` is whole seconds, and 0 would invite an immediate retry).
fn retry_after(deficit: f64, per_sec: f64) -> Duration {
    debug_assert!(deficit > 0.0 && per_sec > 0.0);
    // `as` saturates: an absurdly slow refill gives u64::MAX, not a wrap.
    let secs = (deficit / per_sec).ceil() as u64;
    Duration::from_secs(secs.max(1))
}

/// The node's rate limits, shared by the client API and the server-to-server API.
#[derive(Debug)]
pub struct RateLimits {
    peers: Mutex<RateLimiter>,
    users: Mutex<RateLimiter>,
    claim_pairs: Mutex<RateLimiter>,
    claim_targets: Mutex<RateLimiter>,
    settings: RateLimitSettings,
}

impl RateLimits {
    /// The limits of `limits.rate` (validated: rates finite and positive, bursts at least 1).
    pub fn new(settings: &RateLimitSettings) -> RateLimits {
        let max_keys = settings.max_tracked_keys;
        let limiter = |rate| Mutex::new(RateLimiter::new(rate, max_keys));
        RateLimits {
            peers: limiter(Rate {
                per_sec: settings.peer_requests_per_sec,
                burst: settings.peer_burst as f64,
            }),
            users: limiter(Rate {
                per_sec: settings.user_requests_per_sec,
                burst: settings.user_burst as f64,
            }),
            claim_pairs: limiter(Rate::per_hour(
                settings.key_material_claims_per_pair_per_hour,
            )),
            claim_targets: limiter(Rate::per_hour(
                settings.key_material_claims_per_target_per_hour,
            )),
            settings: settings.clone(),
        }
    }

    /// A request of the authenticated peer provider `domain` on the server-to-server API.
    pub(crate) fn check_peer(&self, domain: &str) -> Result<(), Refusal> {
        match self.peers.lock().handle_request(domain, Instant::now()) {
            Decision::Allowed => Ok(()),
            Decision::Limited { retry_after } => Err(too_many_requests(
                Limit::PeerRate,
                retry_after,
                format!(
                    "provider {domain} exceeded its request rate ({}/s, burst {}, \
                     limits.rate.peer_*)",
                    self.settings.peer_requests_per_sec, self.settings.peer_burst
                ),
            )),
        }
    }

    /// A request of an authenticated client of `user` on the client API.
    pub(crate) fn check_user(&self, user: &UserId) -> Result<(), Refusal> {
        match self
            .users
            .lock()
            .handle_request(user.as_str(), Instant::now())
        {
            Decision::Allowed => Ok(()),
            Decision::Limited { retry_after } => Err(too_many_requests(
                Limit::UserRate,
                retry_after,
                format!(
                    "user {user} exceeded its request rate ({}/s, burst {}, limits.rate.user_*)",
                    self.settings.user_requests_per_sec, self.settings.user_burst
                ),
            )),
        }
    }

    /// A claim of `target`'s KeyPackages for `requester` (protocol-06 §5.1), checked where the
    /// claim is decided (the target's provider): first per (requester, target) pair, then per
    /// target across requesters. A claim refused by the second check gives its pair token back.
    pub(crate) fn check_claim(&self, requester: &UserId, target: &UserId) -> Result<(), Refusal> {
        let now = Instant::now();
        let pair = format!("{requester}\n{target}");
        // One lock order everywhere: pairs, then targets.
        let mut pairs = self.claim_pairs.lock();
        if let Decision::Limited { retry_after } = pairs.handle_request(&pair, now) {
            return Err(too_many_requests(
                Limit::KeyMaterialClaims,
                retry_after,
                format!(
                    "{requester} claimed KeyPackages of {target} too often ({} per hour, \
                     limits.rate.key_material_claims_per_pair_per_hour)",
                    self.settings.key_material_claims_per_pair_per_hour
                ),
            ));
        }
        let decision = self
            .claim_targets
            .lock()
            .handle_request(target.as_str(), now);
        match decision {
            Decision::Allowed => Ok(()),
            Decision::Limited { retry_after } => {
                pairs.handle_refund(&pair);
                Err(too_many_requests(
                    Limit::KeyMaterialClaims,
                    retry_after,
                    format!(
                        "KeyPackages of {target} were claimed too often ({} per hour across \
                         requesters, limits.rate.key_material_claims_per_target_per_hour)",
                        self.settings.key_material_claims_per_target_per_hour
                    ),
                ))
            }
        }
    }
}

/// 429 with `Retry-After` (RFC 6585 §4), counted under `limit`.
fn too_many_requests(limit: Limit, retry_after: Duration, reason: String) -> Refusal {
    let mut refusal = Refusal::new(StatusCode::TOO_MANY_REQUESTS, reason);
    refusal.limit = Some(limit);
    refusal.retry_after = Some(retry_after);
    refusal
}

const SECS_PER_HOUR: f64 = 3600.0;

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_sec: f64, burst: f64, max_keys: usize) -> RateLimiter {
        RateLimiter::new(Rate { per_sec, burst }, max_keys)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Requests of `key` at `now` until one is limited; returns how many were allowed.
    fn drain(limiter: &mut RateLimiter, key: &str, now: Instant) -> usize {
        let mut allowed = 0;
        while limiter.handle_request(key, now) == Decision::Allowed {
            allowed += 1;
            assert!(allowed <= 1_000_000, "never limited");
        }
        allowed
    }

    #[test]
    fn a_new_key_gets_exactly_its_burst_then_is_limited() {
        let t0 = Instant::now();
        let mut limiter = limiter(0.001, 5.0, 10);
        assert_eq!(drain(&mut limiter, "b.example", t0), 5);
        assert!(matches!(
            limiter.handle_request("b.example", t0),
            Decision::Limited { .. }
        ));
        // Another key has its own bucket.
        assert_eq!(drain(&mut limiter, "c.example", t0), 5);
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn tokens_refill_at_the_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let mut limiter = limiter(2.0, 4.0, 10);
        assert_eq!(drain(&mut limiter, "k", t0), 4);
        // Half a second refills one token at 2/s.
        assert_eq!(
            limiter.handle_request("k", t0 + Duration::from_millis(500)),
            Decision::Allowed
        );
        assert!(matches!(
            limiter.handle_request("k", t0 + Duration::from_millis(500)),
            Decision::Limited { .. }
        ));
        // A long pause refills to the burst, not beyond.
        let later = t0 + secs(3600);
        assert_eq!(limiter.tokens("k", later), Some(4.0));
        assert_eq!(drain(&mut limiter, "k", later), 4);
    }

    #[test]
    fn time_going_backwards_refills_nothing() {
        let t0 = Instant::now() + secs(10);
        let mut limiter = limiter(1.0, 1.0, 10);
        assert_eq!(limiter.handle_request("k", t0), Decision::Allowed);
        assert!(matches!(
            limiter.handle_request("k", t0 - secs(5)),
            Decision::Limited { .. }
        ));
        // The refill clock did not move back: one second after t0 gives one token.
        assert_eq!(limiter.handle_request("k", t0 + secs(1)), Decision::Allowed);
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        let t0 = Instant::now();
        let limited = |per_sec: f64, burst: f64, wait: Duration| {
            let mut limiter = limiter(per_sec, burst, 1);
            drain(&mut limiter, "k", t0);
            match limiter.handle_request("k", t0 + wait) {
                Decision::Limited { retry_after } => retry_after,
                Decision::Allowed => panic!("allowed at {per_sec}/s after {wait:?}"),
            }
        };
        // 0.001/s: a whole token takes 1000 s.
        assert_eq!(limited(0.001, 5.0, Duration::ZERO), secs(1000));
        // 3 per hour: 1200 s per token; 200 s later, 1000 s are left.
        assert_eq!(limited(3.0 / 3600.0, 3.0, secs(200)), secs(1000));
        // 0.3/s: 3.33 s rounds up to 4.
        assert_eq!(limited(0.3, 1.0, Duration::ZERO), secs(4));
        // Fast refill: a fraction of a second still says 1.
        assert_eq!(limited(1000.0, 1.0, Duration::ZERO), secs(1));
        // Absurdly slow refill saturates instead of wrapping.
        assert_eq!(limited(1e-300, 1.0, Duration::ZERO), secs(u64::MAX));
    }

    #[test]
    fn the_least_recently_used_key_is_evicted_and_comes_back_full() {
        let t0 = Instant::now();
        let mut limiter = limiter(0.001, 2.0, 3);
        for key in ["a", "b", "c"] {
            assert_eq!(limiter.handle_request(key, t0), Decision::Allowed);
        }
        // "a" is used again, so "b" is now the least recently used.
        assert_eq!(limiter.handle_request("a", t0), Decision::Allowed);
        assert_eq!(limiter.handle_request("d", t0), Decision::Allowed);
        assert_eq!(limiter.len(), 3);
        assert_eq!(limiter.tokens("b", t0), None, "b was evicted");
        assert_eq!(limiter.tokens("a", t0), Some(0.0), "a kept its debt");
        assert_eq!(limiter.tokens("c", t0), Some(1.0));
        // An evicted key starts over with a full bucket.
        assert_eq!(drain(&mut limiter, "b", t0), 2);
        assert_eq!(limiter.tokens("c", t0), None, "c was next");
    }

    #[test]
    fn a_refund_returns_one_token_up_to_the_burst() {
        let t0 = Instant::now();
        let mut limiter = limiter(0.001, 2.0, 4);
        assert_eq!(drain(&mut limiter, "k", t0), 2);
        limiter.handle_refund("k");
        assert_eq!(limiter.tokens("k", t0), Some(1.0));
        limiter.handle_refund("k");
        limiter.handle_refund("k");
        assert_eq!(limiter.tokens("k", t0), Some(2.0), "never above the burst");
        limiter.handle_refund("unknown");
        assert_eq!(limiter.len(), 1, "a refund does not create a key");
    }

    #[test]
    fn equal_inputs_give_equal_decisions() {
        let t0 = Instant::now();
        let run = || {
            let mut limiter = limiter(0.5, 3.0, 4);
            (0..200u64)
                .map(|i| {
                    let key = format!("k{}", (i * 7) % 3);
                    limiter.handle_request(&key, t0 + Duration::from_millis(i * 130))
                })
                .collect::<Vec<_>>()
        };
        let first = run();
        assert_eq!(first, run());
        assert!(first.contains(&Decision::Allowed));
        assert!(first.iter().any(|d| matches!(d, Decision::Limited { .. })));
    }

    fn settings() -> RateLimitSettings {
        RateLimitSettings {
            key_material_claims_per_pair_per_hour: 2,
            key_material_claims_per_target_per_hour: 3,
            ..RateLimitSettings::default()
        }
    }

    /// Panics with the reason if `result` is a refusal.
    fn allowed(result: Result<(), Refusal>, what: &str) {
        if let Err(refusal) = result {
            panic!("{what}: {} {}", refusal.status, refusal.reason);
        }
    }

    /// The refusal `result` must be.
    fn refused(result: Result<(), Refusal>) -> Refusal {
        match result {
            Ok(()) => panic!("expected a refusal"),
            Err(refusal) => refusal,
        }
    }

    fn user(name: &str) -> UserId {
        UserId::parse(&format!("mimi://a.example/u/{name}")).unwrap()
    }

    #[test]
    fn claims_are_limited_per_pair_then_per_target_protocol06_5_1() {
        let limits = RateLimits::new(&settings());
        let (alice, bob, cathy, dave) = (user("alice"), user("bob"), user("cathy"), user("dave"));
        for _ in 0..2 {
            allowed(limits.check_claim(&bob, &alice), "within the pair limit");
        }
        let refusal = refused(limits.check_claim(&bob, &alice));
        assert_eq!(refusal.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refusal.limit, Some(Limit::KeyMaterialClaims));
        assert_eq!(refusal.retry_after, Some(secs(1800)), "2 per hour");
        assert!(refusal.reason.contains("per_pair"), "{}", refusal.reason);

        // Another requester gets the one claim left under the per-target cap of 3...
        allowed(limits.check_claim(&cathy, &alice), "within both limits");
        // ...and then the target is capped for everyone.
        let refusal = refused(limits.check_claim(&cathy, &alice));
        assert!(
            refusal.reason.contains("across requesters"),
            "{}",
            refusal.reason
        );
        let refusal = refused(limits.check_claim(&dave, &alice));
        assert_eq!(refusal.limit, Some(Limit::KeyMaterialClaims));
        assert_eq!(refusal.retry_after, Some(secs(1200)), "3 per hour");
        // The capped claims cost their pairs nothing: dave still has his two.
        assert_eq!(
            limits
                .claim_pairs
                .lock()
                .tokens(&format!("{dave}\n{alice}"), Instant::now())
                .map(f64::floor),
            Some(2.0)
        );
        // Other targets are unaffected.
        allowed(limits.check_claim(&bob, &dave), "another target");
    }

    #[test]
    fn peer_and_user_refusals_name_the_limit_and_the_caller() {
        let limits = RateLimits::new(&RateLimitSettings {
            peer_requests_per_sec: 0.001,
            peer_burst: 1,
            user_requests_per_sec: 0.001,
            user_burst: 1,
            ..RateLimitSettings::default()
        });
        allowed(limits.check_peer("b.example"), "burst of one");
        let refusal = refused(limits.check_peer("b.example"));
        assert_eq!(refusal.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refusal.limit, Some(Limit::PeerRate));
        assert_eq!(refusal.retry_after, Some(secs(1000)));
        assert!(refusal.reason.contains("b.example"), "{}", refusal.reason);
        allowed(limits.check_peer("c.example"), "own bucket");

        allowed(limits.check_user(&user("alice")), "burst of one");
        let refusal = refused(limits.check_user(&user("alice")));
        assert_eq!(refusal.limit, Some(Limit::UserRate));
        assert!(refusal.reason.contains("alice"), "{}", refusal.reason);
    }
}
