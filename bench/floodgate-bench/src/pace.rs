//! The open loop's clock: waits until a request is due, to the microsecond, on the runtime's own
//! thread.
//!
//! Tokio's timer rounds up to the next millisecond, which would add up to a millisecond to every
//! latency measured from the intended send time. On Linux a timer file descriptor is armed for
//! the exact instant and waited on by the runtime's reactor beside the connections' sockets, so
//! pacing costs no thread of its own and no cross-thread wake-up per request (a separate pacer
//! thread cost about two context switches per request, on the cores the server needs).
//! Elsewhere the generator falls back to Tokio's timer.

#[cfg(target_os = "linux")]
pub(crate) use timer_fd::Pacer;
#[cfg(not(target_os = "linux"))]
pub(crate) use tokio_timer::Pacer;

#[cfg(target_os = "linux")]
mod timer_fd {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::time::Instant;

    use rustix::time::{
        Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
        timerfd_settime,
    };
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    /// A one-shot timer the reactor can wait on.
    pub(crate) struct Pacer {
        timer: AsyncFd<OwnedFd>,
    }

    impl Pacer {
        /// A timer on the monotonic clock, the one [`Instant`] reads.
        pub(crate) fn new() -> io::Result<Pacer> {
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            // Deprecated for types that do not own their descriptor (it could be closed while
            // registered); an `OwnedFd` moved into the `AsyncFd` is the case that is sound, and
            // the crate forbids the `unsafe` spelling.
            #[allow(deprecated)]
            let timer = AsyncFd::with_interest(fd, Interest::READABLE)?;
            Ok(Pacer { timer })
        }

        /// Returns at `due` (at once if it has passed).
        pub(crate) async fn until(&self, due: Instant) -> io::Result<()> {
            let wait = due.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return Ok(());
            }
            let once = Itimerspec {
                it_interval: Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: Timespec {
                    tv_sec: wait.as_secs() as i64,
                    tv_nsec: i64::from(wait.subsec_nanos()),
                },
            };
            timerfd_settime(self.timer.get_ref(), TimerfdTimerFlags::empty(), &once)?;
            loop {
                let mut ready = self.timer.readable().await?;
                let mut expirations = [0u8; 8];
                match rustix::io::read(ready.get_inner(), &mut expirations) {
                    Ok(_) => return Ok(()),
                    Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod tokio_timer {
    use std::io;
    use std::time::Instant;

    /// Tokio's timer, to the millisecond.
    pub(crate) struct Pacer;

    impl Pacer {
        /// Nothing to set up.
        pub(crate) fn new() -> io::Result<Pacer> {
            Ok(Pacer)
        }

        /// Returns at `due`, or up to a millisecond after it.
        pub(crate) async fn until(&self, due: Instant) -> io::Result<()> {
            tokio::time::sleep_until(due.into()).await;
            Ok(())
        }
    }
}
