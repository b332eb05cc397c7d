//! Waiting until an exact instant inside the tokio runtime.
//!
//! tokio's own timer wheel has a 1 ms resolution: pacing requests with it would
//! send them up to a millisecond late and charge that to the server. A Linux
//! `timerfd` armed with an absolute `CLOCK_MONOTONIC` deadline fires on an hrtimer
//! (no timer slack) and wakes the runtime's own epoll, so the task that sends the
//! request runs on time without a second thread and a cross-thread wake-up per
//! request.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

#[derive(Debug)]
pub struct Pacer {
    fd: AsyncFd<OwnedFd>,
    /// The same moment on both clocks: `Instant` is `CLOCK_MONOTONIC` on Linux, but
    /// opaque, so deadlines are converted through this pair.
    base_instant: Instant,
    base_monotonic: Duration,
}

fn monotonic_now() -> io::Result<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into memory we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let secs = u64::try_from(ts.tv_sec).map_err(io::Error::other)?;
    let nanos = u32::try_from(ts.tv_nsec).map_err(io::Error::other)?;
    Ok(Duration::new(secs, nanos))
}

impl Pacer {
    /// Needs a tokio runtime with I/O enabled.
    pub fn new() -> io::Result<Self> {
        // SAFETY: timerfd_create takes no pointers; the result is checked below.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let base_instant = Instant::now();
        let base_monotonic = monotonic_now()?;
        // SAFETY: an `OwnedFd` owns a valid descriptor, always returns the same one
        // from `as_raw_fd`, and only closes it when the `AsyncFd` drops it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE)? };
        Ok(Self {
            fd,
            base_instant,
            base_monotonic,
        })
    }

    /// Returns at `deadline` (at once if it has passed).
    pub async fn sleep_until(&self, deadline: Instant) -> io::Result<()> {
        if deadline <= Instant::now() {
            return Ok(());
        }
        let at = self.base_monotonic + deadline.saturating_duration_since(self.base_instant);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: libc::time_t::try_from(at.as_secs()).map_err(io::Error::other)?,
                tv_nsec: at.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: the descriptor is ours and open; `spec` lives across the call and
        // the old value is not asked for (null).
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.get_ref().as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a buffer of 8 bytes we own.
            let n = unsafe {
                libc::read(
                    guard.get_inner().as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            if n == 8 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_at_the_deadline_not_before() {
        let pacer = Pacer::new().expect("timerfd");
        for micros in [0u64, 300, 1_500, 200] {
            let deadline = Instant::now() + Duration::from_micros(micros);
            pacer.sleep_until(deadline).await.expect("sleep");
            assert!(Instant::now() >= deadline);
        }
        // A deadline in the past returns at once.
        pacer
            .sleep_until(Instant::now() - Duration::from_millis(5))
            .await
            .expect("past deadline");
    }
}
