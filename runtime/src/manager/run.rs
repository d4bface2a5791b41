//! The per-service task: instantiate, poll on readings or ticks, throttle to the fuel budget,
//! enforce the lifetime, restart per policy, and record the stop reason and metering. It runs
//! on the host's guest runtime; every wait in it also ends on a stop request or the lifetime.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wasmtime::Engine;

use crate::io::lock;
use crate::manager::instance::{Launch, Running};
use crate::manager::{Live, ProbeAsk, RestartPolicy, ServiceSpec, ServiceState, Shared};
use crate::{Metering, StopReason};

/// How often `agora_health` is called while the service runs.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// What a service task needs from the host (never the `Host` itself: the task runs on the
/// host's runtime, which must not be dropped from inside it).
#[derive(Clone)]
pub(crate) struct HostParts {
    pub engine: Engine,
    pub fuel_per_cpu_ms: u64,
}

/// Runs a service until it stops for good. Between a failed instance and its restart it waits
/// the spec's [`crate::Backoff`] (a stop request ends the wait); the wait is not uptime.
pub(crate) async fn run_service(host: HostParts, spec: ServiceSpec, shared: Arc<Shared>) {
    let started = Instant::now();
    // A lifetime too long to represent is no lifetime.
    let deadline = spec
        .limits
        .wall_clock_ms
        .and_then(|ms| started.checked_add(Duration::from_millis(ms)));
    let mut restarts = 0u32;
    // Failures in a row: an instance that ran for `reset_after` starts the doubling again.
    let mut in_a_row = 0u32;
    // Quick failures in a row (`Health::quick_failures`).
    let mut quick = 0u32;
    let reason = loop {
        let began = Instant::now();
        let reason = run_instance(&host, &spec, &shared, deadline).await;
        let retry = match spec.restart {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure { max_restarts } => {
                reason.is_failure() && restarts < max_restarts && !shared.stop.is_requested()
            }
            RestartPolicy::Always => {
                !matches!(reason, StopReason::Requested | StopReason::Lifetime)
                    && !shared.stop.is_requested()
            }
        };
        if !retry {
            break reason;
        }
        restarts = restarts.saturating_add(1);
        quick = if began.elapsed() < crate::manager::QUICK_FAILURE {
            quick.saturating_add(1)
        } else {
            0
        };
        in_a_row = if began.elapsed() >= spec.backoff.reset_after() {
            1
        } else {
            in_a_row.saturating_add(1)
        };
        let delay = spec.backoff.delay(in_a_row);
        {
            let mut live = lock(&shared.live);
            live.metering.restarts = restarts;
            live.quick_failures = quick;
            live.last_failure = Some(reason.clone());
            bank_uptime(&mut live);
            // The next instance has answered nothing yet.
            live.last_poll = None;
            live.guest_health = None;
        }
        tracing::info!(
            service = %spec.id,
            ?reason,
            restarts,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "service failed; restarting after its backoff"
        );
        let until_deadline =
            deadline.map_or(delay, |d| d.saturating_duration_since(Instant::now()));
        pause(&shared, delay.min(until_deadline)).await;
        if shared.stop.is_requested() {
            break StopReason::Requested;
        }
        lock(&shared.live).active_since = Some(Instant::now());
    };
    tracing::info!(service = %spec.id, ?reason, "service stopped");
    let mut live = lock(&shared.live);
    bank_uptime(&mut live);
    live.metering.uptime_ms = live.banked_uptime_ms;
    live.state = ServiceState::Stopped(reason.clone());
    drop(live);
    shared.state_tx.send_replace(ServiceState::Stopped(reason));
}

/// Moves the current active period into the banked uptime.
fn bank_uptime(live: &mut Live) {
    if let Some(since) = live.active_since.take() {
        live.banked_uptime_ms = live.banked_uptime_ms.saturating_add(elapsed_ms(since));
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Sleeps for `d` unless a stop is requested first.
async fn pause(shared: &Shared, d: Duration) {
    tokio::select! {
        () = shared.stop.requested() => {}
        () = tokio::time::sleep(d) => {}
    }
}

/// Runs one instance to its stop reason, folding its usage into the shared metering. The
/// instance (store, memory, pool slot) is dropped before this returns.
async fn run_instance(
    host: &HostParts,
    spec: &ServiceSpec,
    shared: &Shared,
    deadline: Option<Instant>,
) -> StopReason {
    let launch = Launch {
        engine: host.engine.clone(),
        fuel_per_cpu_ms: host.fuel_per_cpu_ms,
        stop: shared.stop.clone(),
        deadline,
    };
    let started = {
        let _calls = shared.io.calls.lock().await;
        Running::start(launch, &spec.module, spec, shared.io.clone()).await
    };
    let mut inst = match started {
        Ok(inst) => inst,
        Err(reason) => return reason,
    };
    // This task alone answers probes while the instance lives.
    let mut probes = shared.probe_rx.lock().await;
    let base = lock(&shared.live).metering.clone();
    let tick = Duration::from_millis(spec.tick_ms.max(1));
    let budget = spec.limits.fuel_per_second.max(1);
    let mut window = Throttle::new(Instant::now(), inst.fuel_used, budget);
    // The first successful poll also reads the guest's health, so a sick guest is never seen
    // as answering before its health export has been heard.
    let mut last_health: Option<Instant> = None;
    // Since when the guest's health export has answered non-zero without a break.
    let mut sick_since: Option<Instant> = None;
    let sick_limit = spec.unhealthy_restart_ms.map(Duration::from_millis);
    let reason = loop {
        if shared.stop.is_requested() {
            break StopReason::Requested;
        }
        if let Ok(ask) = probes.try_recv() {
            let answered = {
                let _calls = shared.io.calls.lock().await;
                answer_probe(&mut inst, ask).await
            };
            match answered {
                Some(reason) => break reason,
                None => continue,
            }
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break StopReason::Lifetime;
        }
        window.roll(now, inst.fuel_used);
        let until_deadline = deadline.map_or(tick, |d| d.saturating_duration_since(now));
        if window.spent(inst.fuel_used) {
            // Budget for this second is spent: throttle until the window ends.
            let rest = window.rest(now);
            pause(shared, rest.min(until_deadline)).await;
            continue;
        }
        if shared.io.readings.is_empty() {
            let wait = tick.min(until_deadline);
            tokio::select! {
                () = shared.stop.requested() => continue,
                Some(ask) = probes.recv() => {
                    let answered = {
                        // A probe is a guest call too: no state copy while it runs.
                        let _calls = shared.io.calls.lock().await;
                        answer_probe(&mut inst, ask).await
                    };
                    match answered {
                        Some(reason) => break reason,
                        None => continue,
                    }
                }
                () = shared.io.readings.readable() => {}
                () = tokio::time::sleep(wait) => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                continue;
            }
        }
        let result = {
            let _calls = shared.io.calls.lock().await;
            inst.poll().await
        };
        // The poll is counted before the health read: a stop requested meanwhile ends that
        // read (`Err(Requested)`), and the readings this poll processed must still show as
        // polled. It counts as answering (`last_poll`) only once its health was heard.
        {
            let mut live = lock(&shared.live);
            fold(&mut live.metering, &base, &inst, shared);
            live.metering.polls = live.metering.polls.saturating_add(1);
        }
        // The health read is a guest call too: not while this second's budget is spent (it had
        // a second's fuel of its own beside the poll's: twice the CPU share, THREATS G5).
        if result.is_ok()
            && !window.spent(inst.fuel_used)
            && last_health.is_none_or(|t| t.elapsed() >= HEALTH_INTERVAL)
        {
            last_health = Some(Instant::now());
            let health = {
                let _calls = shared.io.calls.lock().await;
                inst.health().await
            };
            match health {
                Some(Ok(h)) => {
                    lock(&shared.live).guest_health = Some(h);
                    if h == 0 {
                        sick_since = None;
                    } else {
                        let since = *sick_since.get_or_insert_with(Instant::now);
                        if sick_limit.is_some_and(|limit| since.elapsed() >= limit) {
                            break StopReason::Unhealthy(h);
                        }
                    }
                }
                Some(Err(reason)) => break reason,
                None => {}
            }
        }
        lock(&shared.live).last_poll = Some(Instant::now());
        match result {
            Ok(0) => {}
            Ok(code) => break StopReason::Exited(code),
            Err(reason) => break reason,
        }
    };
    fold(&mut lock(&shared.live).metering, &base, &inst, shared);
    drop(inst);
    reason
}

/// Calls `agora_probe` for one [`ProbeAsk`] and sends the outcome; a failed call stops the
/// service (as a failed `agora_health` does): returns its reason.
async fn answer_probe(inst: &mut Running, (nonce, reply): ProbeAsk) -> Option<StopReason> {
    let outcome = inst.probe(nonce).await.transpose();
    let failed = outcome.as_ref().err().cloned();
    let _ = reply.send(outcome);
    failed
}

/// Metering = what earlier instances used (`base`) + this instance's usage so far.
fn fold(m: &mut Metering, base: &Metering, inst: &Running, shared: &Shared) {
    m.fuel_used = base.fuel_used.saturating_add(inst.fuel_used);
    m.peak_memory_bytes = base.peak_memory_bytes.max(inst.peak_memory());
    m.output_bytes = base.output_bytes.saturating_add(inst.output_bytes());
    m.readings_processed = shared.io.readings_processed.load(Ordering::Relaxed);
    m.readings_dropped = shared.io.readings_dropped.load(Ordering::Relaxed);
    m.published = shared.io.published.load(Ordering::Relaxed);
}

/// The guest's fuel budget per second: a window that rolls every second and carries what the
/// last one spent over the budget into the next (THREATS G5: resetting it forgot the overspend,
/// so a poll and a health read each using most of a second's fuel got twice the CPU share).
#[derive(Debug)]
struct Throttle {
    start: Instant,
    base: u64,
    budget: u64,
}

impl Throttle {
    fn new(now: Instant, fuel_used: u64, budget: u64) -> Throttle {
        Throttle {
            start: now,
            base: fuel_used,
            budget,
        }
    }

    /// Starts a new window once a second has passed, charged with the last one's overspend.
    fn roll(&mut self, now: Instant, fuel_used: u64) {
        if now.duration_since(self.start) >= Duration::from_secs(1) {
            let over = fuel_used
                .saturating_sub(self.base)
                .saturating_sub(self.budget);
            self.start = now;
            self.base = fuel_used.saturating_sub(over);
        }
    }

    /// Whether this window's budget is spent.
    fn spent(&self, fuel_used: u64) -> bool {
        fuel_used.saturating_sub(self.base) >= self.budget
    }

    /// What is left of this window.
    fn rest(&self, now: Instant) -> Duration {
        Duration::from_secs(1).saturating_sub(now.duration_since(self.start))
    }
}

#[cfg(test)]
mod throttle_tests {
    use super::*;

    /// A window overspent by a poll and a health read carries the excess: the guest averages
    /// its budget, not twice it.
    #[test]
    fn an_overspent_window_is_charged_to_the_next() {
        let t0 = Instant::now();
        let mut w = Throttle::new(t0, 0, 100);
        // A poll of 90 and a health read of 90 in the first second.
        assert!(!w.spent(90));
        assert!(w.spent(180));
        w.roll(t0 + Duration::from_millis(500), 180);
        assert!(w.spent(180), "no new window before the second ends");
        w.roll(t0 + Duration::from_secs(1), 180);
        // 80 over: the new window starts with 80 of its 100 spent.
        assert!(!w.spent(180));
        assert!(w.spent(200));
        // Over ten seconds of polls of 90 whenever allowed, at most ~11 budgets are used.
        let mut used = 200;
        for s in 2..12 {
            w.roll(t0 + Duration::from_secs(s), used);
            while !w.spent(used) {
                used += 90;
            }
        }
        assert!(used <= 100 * 12 + 90, "{used}");
    }
}
