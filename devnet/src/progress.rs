//! A progress line for CLI commands that wait (fetching an image, a file, nodes starting, a
//! peer connecting): a spinner with the elapsed time on stderr, drawn only when stderr is a
//! terminal and the output is not `--json`, so scripts and pipes never see it. Hand-made (one
//! thread, no dependency); nothing is drawn for waits shorter than [`DELAY`].

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Waits shorter than this draw nothing.
pub const DELAY: Duration = Duration::from_millis(300);
const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
const TICK: Duration = Duration::from_millis(120);
/// Clears the current terminal line.
const CLEAR: &str = "\r\x1b[2K";

/// Whether a progress line may be drawn: never in `--json`, only on a terminal, not when
/// `TERM=dumb` or `AGORA_NO_PROGRESS` is set.
pub fn wanted(json: bool, stderr_is_terminal: bool) -> bool {
    !json
        && stderr_is_terminal
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
        && std::env::var_os("AGORA_NO_PROGRESS").is_none()
}

/// A running progress line; cleared when dropped (or [`Progress::finish`]ed).
#[derive(Debug)]
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts a progress line saying `label` on stderr if [`wanted`]; otherwise does nothing.
    pub fn start(label: impl Into<String>, json: bool) -> Progress {
        if wanted(json, std::io::stderr().is_terminal()) {
            Self::draw_to(label.into(), Box::new(std::io::stderr()), DELAY)
        } else {
            Progress {
                stop: Arc::new(AtomicBool::new(true)),
                thread: None,
            }
        }
    }

    /// Draws `label` with a spinner to `out` every tick after `delay`, until stopped.
    fn draw_to(label: String, mut out: Box<dyn Write + Send>, delay: Duration) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut drawn = false;
            let mut frame = 0usize;
            while !flag.load(Ordering::Relaxed) {
                let elapsed = started.elapsed();
                if elapsed >= delay {
                    let f = FRAMES[frame % FRAMES.len()];
                    frame += 1;
                    let _ = write!(out, "{CLEAR}{f} {label} {:.1} s", elapsed.as_secs_f64());
                    let _ = out.flush();
                    drawn = true;
                }
                std::thread::park_timeout(TICK);
            }
            if drawn {
                let _ = write!(out, "{CLEAR}");
                let _ = out.flush();
            }
        });
        Progress {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and clears the line.
    pub fn finish(self) {}
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn never_in_json_or_off_a_terminal() {
        assert!(!wanted(true, true));
        assert!(!wanted(false, false));
        assert!(!wanted(true, false));
    }

    #[test]
    fn draws_the_label_and_clears_the_line() {
        let buf = Shared::default();
        let p = Progress::draw_to("fetching".into(), Box::new(buf.clone()), Duration::ZERO);
        let deadline = Instant::now() + Duration::from_secs(10);
        while buf.0.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "nothing drawn");
            std::thread::sleep(Duration::from_millis(10));
        }
        p.finish();
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains("fetching"), "{text:?}");
        assert!(text.ends_with(CLEAR), "the line is cleared: {text:?}");
    }

    #[test]
    fn a_short_wait_draws_nothing() {
        let buf = Shared::default();
        let p = Progress::draw_to(
            "quick".into(),
            Box::new(buf.clone()),
            Duration::from_secs(60),
        );
        p.finish();
        assert!(buf.0.lock().unwrap().is_empty());
    }
}
