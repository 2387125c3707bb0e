//! The host's ends of the worker's pipes, read and written on the calling
//! thread without blocking it past a deadline.
//!
//! The calling thread does the I/O itself rather than handing it to a
//! thread of its own: on a VM, every wake-up of a sleeping thread costs an
//! interrupt and a few microseconds, and a hand-off to an I/O thread would
//! add two of them to every run.
//!
//! A write to a worker that died fails with `EPIPE` where `SIGPIPE` is
//! ignored, as in every Rust executable (the standard library ignores it
//! before `main`); a program that embeds the host and restores the
//! signal's default action would be killed by it instead.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

/// Makes `file` non-blocking, so that [`Until`] can wait for it with a
/// deadline. (Only the host's own end: the worker's end of a pipe is
/// another open file description.)
pub(super) fn set_nonblocking(file: &impl AsFd) -> io::Result<()> {
    let fd = file.as_fd().as_raw_fd();
    // SAFETY: `fd` is open for as long as `file` is borrowed; F_GETFL and
    // F_SETFL touch only its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A non-blocking pipe end whose reads and writes wait for it until
/// `deadline`, then fail with [`io::ErrorKind::TimedOut`].
pub(super) struct Until<'a, F> {
    pub(super) file: &'a mut F,
    pub(super) deadline: Instant,
}

impl<F: AsFd> Until<'_, F> {
    /// Runs `op` until it does not find the pipe empty (or full), waiting
    /// for the pipe to be ready for `events` in between.
    fn retry<T>(
        &mut self,
        events: libc::c_short,
        mut op: impl FnMut(&mut F) -> io::Result<T>,
    ) -> io::Result<T> {
        loop {
            match op(self.file) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait(self.file, events, self.deadline)?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                done => return done,
            }
        }
    }
}

impl<F: Read + AsFd> Read for Until<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.retry(libc::POLLIN, |file| file.read(buf))
    }
}

impl<F: Write + AsFd> Write for Until<'_, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.retry(libc::POLLOUT, |file| file.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.retry(libc::POLLOUT, Write::flush)
    }
}

/// Waits until `file` is ready for `events` (or closed at the other end,
/// which the next read or write then reports), or fails with
/// [`io::ErrorKind::TimedOut`] once `deadline` has passed.
fn wait(file: &impl AsFd, events: libc::c_short, deadline: Instant) -> io::Result<()> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let mut poll = libc::pollfd {
            fd: file.as_fd().as_raw_fd(),
            events,
            revents: 0,
        };
        let timeout = libc::timespec {
            tv_sec: left.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
            tv_nsec: left.subsec_nanos().into(),
        };
        // SAFETY: one valid `pollfd` and a valid timespec, both on the
        // stack for the duration of the call; no signal mask is changed.
        let ready = unsafe { libc::ppoll(&mut poll, 1, &timeout, std::ptr::null()) };
        match ready {
            1.. => return Ok(()),
            0 => {}
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A pipe: (read end, write end), both non-blocking.
    fn pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        set_nonblocking(&reader).expect("non-blocking");
        set_nonblocking(&writer).expect("non-blocking");
        (reader, writer)
    }

    #[test]
    fn a_read_waits_for_data_written_later() {
        let (mut reader, mut writer) = pipe();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            writer.write_all(b"late").expect("written");
        });
        let mut until = Until {
            file: &mut reader,
            deadline: Instant::now() + Duration::from_secs(10),
        };
        let mut got = [0u8; 4];
        until.read_exact(&mut got).expect("read once written");
        assert_eq!(&got, b"late");
        late.join().expect("the writer finished");
    }

    #[test]
    fn reads_and_writes_give_up_at_the_deadline() {
        let (mut reader, mut writer) = pipe();
        let start = Instant::now();
        let mut until = Until {
            file: &mut reader,
            deadline: start + Duration::from_millis(50),
        };
        let e = until.read(&mut [0u8; 1]).expect_err("nothing to read");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(50));
        // No one reads: the pipe fills, and the write then times out.
        let mut until = Until {
            file: &mut writer,
            deadline: Instant::now() + Duration::from_millis(50),
        };
        let e = until
            .write_all(&vec![0u8; 16 << 20])
            .expect_err("a full pipe");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(reader);
    }

    #[test]
    fn a_closed_other_end_is_reported_not_waited_for() {
        let (mut reader, writer) = pipe();
        drop(writer);
        let mut until = Until {
            file: &mut reader,
            deadline: Instant::now() + Duration::from_secs(10),
        };
        assert_eq!(until.read(&mut [0u8; 1]).expect("end of file"), 0);
        let (reader, mut writer) = pipe();
        drop(reader);
        let mut until = Until {
            file: &mut writer,
            deadline: Instant::now() + Duration::from_secs(10),
        };
        let e = until.write(b"x").expect_err("no reader");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
