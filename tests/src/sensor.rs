//! Sensors for the upgrade process test and bench (`tests/tests/e2e/fleet_upgrade.rs`,
//! `tests/benches/upgrade.rs`): a thread that sends unsigned radio frames of some devices, each
//! to the edge that hears it, and can be paused so that a count can be checked against exactly
//! what was sent.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::adversary::radio::unsigned_frame;
use crate::wait_until;

/// Sensors: every `every` while on, one unsigned frame of each `(device, edge)` to its edge,
/// all with the same sequence number. Stops its thread when dropped.
pub struct Sensor {
    on: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU32>,
    /// Bumped by the thread after each round, sent or skipped: a round that ends after `on`
    /// changed is the last that may have read the old value.
    rounds: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sensor {
    /// Starts sending (on) to `edges`, a `(device, "ip:port")` each, one round every `every`.
    pub fn start(edges: Vec<(u32, String)>, every: Duration) -> Self {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let (on, stop, sent, rounds) = (
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU32::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (o, st, se, r) = (on.clone(), stop.clone(), sent.clone(), rounds.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                if o.load(Ordering::SeqCst) {
                    let seq = se.load(Ordering::SeqCst) + 1;
                    for (device, edge) in &edges {
                        socket.send_to(&unsigned_frame(*device, seq), edge).unwrap();
                    }
                    se.store(seq, Ordering::SeqCst);
                }
                r.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(every);
            }
        });
        Sensor {
            on,
            stop,
            sent,
            rounds,
            thread: Some(thread),
        }
    }

    /// Pauses (`false`) or resumes sending; returns the readings sent so far (per device), once
    /// the thread has finished a round since the switch (a send in progress is then counted,
    /// and no later one starts while paused).
    pub fn set(&self, on: bool) -> u32 {
        self.on.store(on, Ordering::SeqCst);
        let before = self.rounds.load(Ordering::SeqCst);
        wait_until(
            "the sensor thread to finish a round",
            Duration::from_secs(10),
            || self.rounds.load(Ordering::SeqCst) > before,
        );
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
