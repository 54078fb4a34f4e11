//! Batched UDP syscalls: `recvmmsg` to take every waiting datagram in one call, and
//! `sendmmsg` to send a tick's snapshots a batch at a time. At thousands of players
//! the per-datagram syscalls, not the game, were what ran out of CPU first.
//!
//! Both keep their buffers and headers from call to call: a steady-state batch
//! allocates nothing.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use tanks_core::protocol::game::udp::MAX_DATAGRAM;

use crate::outbox::Outbox;

/// Datagrams per `recvmmsg`: enough to drain a burst of inputs in a few calls, small
/// enough that a batch's buffers (128 KiB) stay in cache.
pub const RECV_BATCH: usize = 64;
/// Datagrams per `sendmmsg`. The kernel takes at most 1,024 (`UIO_MAXIOV`).
pub const SEND_BATCH: usize = 64;
/// One byte more than the largest datagram we accept, so a longer one shows up as
/// too large (the kernel truncates it to the buffer) instead of passing as valid.
const SLOT: usize = MAX_DATAGRAM + 1;

/// Receives up to [`RECV_BATCH`] datagrams per syscall into reused buffers.
pub struct Receiver {
    headers: MultiHeaders<SockaddrStorage>,
    buffers: Box<[u8]>,
}

impl Default for Receiver {
    fn default() -> Self {
        Self {
            headers: MultiHeaders::preallocate(RECV_BATCH, None),
            buffers: vec![0; RECV_BATCH * SLOT].into_boxed_slice(),
        }
    }
}

impl Receiver {
    /// Waits for a datagram (as long as the socket's read timeout; `EAGAIN` when it
    /// expires), takes it and whatever else is already queued, and hands each to
    /// `handle` with its source. Returns how many were received.
    pub fn recv(
        &mut self,
        socket: &UdpSocket,
        mut handle: impl FnMut(&[u8], SocketAddr),
    ) -> nix::Result<usize> {
        let mut chunks = self.buffers.chunks_exact_mut(SLOT);
        // Built on the stack each call: the slices borrow the buffers only for it.
        let mut slices: [[IoSliceMut<'_>; 1]; RECV_BATCH] =
            std::array::from_fn(|_| [IoSliceMut::new(chunks.next().unwrap_or_default())]);
        // MSG_WAITFORONE: block for the first datagram only, then take what is there.
        let results = recvmmsg(
            socket.as_raw_fd(),
            &mut self.headers,
            slices.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        let mut received = 0;
        for message in results {
            received += 1;
            // UDP always has a source; a datagram without one is not ours to answer.
            let Some(from) = message.address.as_ref().and_then(to_std) else {
                continue;
            };
            let bytes = message.iovs().next().unwrap_or_default();
            handle(bytes, from);
        }
        Ok(received)
    }
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// What a batched send did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendStats {
    pub sent: u64,
    pub failed: u64,
}

impl SendStats {
    pub fn add(&mut self, other: SendStats) {
        self.sent += other.sent;
        self.failed += other.failed;
    }
}

/// Sends an [`Outbox`] [`SEND_BATCH`] datagrams per syscall, with reused headers.
pub struct Sender {
    headers: MultiHeaders<SockaddrStorage>,
    addrs: Vec<Option<SockaddrStorage>>,
}

impl Default for Sender {
    fn default() -> Self {
        Self {
            headers: MultiHeaders::preallocate(SEND_BATCH, None),
            addrs: Vec::with_capacity(SEND_BATCH),
        }
    }
}

impl Sender {
    pub fn send(&mut self, socket: &UdpSocket, outbox: &Outbox) -> SendStats {
        self.send_range(socket, outbox, 0..outbox.len())
    }

    /// Sends the outbox's datagrams `range` (a share of a tick's snapshots).
    pub fn send_range(
        &mut self,
        socket: &UdpSocket,
        outbox: &Outbox,
        range: Range<usize>,
    ) -> SendStats {
        let fd = socket.as_raw_fd();
        let offset = range.start;
        send_in_batches(range.len(), SEND_BATCH, |range| {
            let range = range.start + offset..range.end + offset;
            self.addrs.clear();
            self.addrs
                .extend(range.clone().map(|i| Some(outbox.get(i).0.into())));
            let slices: [[IoSlice<'_>; 1]; SEND_BATCH] = std::array::from_fn(|k| {
                let message = if k < range.len() {
                    outbox.get(range.start + k).1
                } else {
                    &[]
                };
                [IoSlice::new(message)]
            });
            // Each header is paired with one address; the extra slices are not sent.
            let results = sendmmsg(
                fd,
                &mut self.headers,
                &slices[..range.len()],
                &self.addrs,
                [],
                MsgFlags::empty(),
            )?;
            Ok(results.count())
        })
    }
}

/// Splits `0..total` into at most `parts` contiguous shares of nearly equal size,
/// and at most one share per `min_share` items (a share's thread must be worth its
/// start). Never empty: `0..0` is one share.
pub fn shares(total: usize, parts: usize, min_share: usize) -> Vec<Range<usize>> {
    let parts = parts.max(1).min(total.div_ceil(min_share.max(1))).max(1);
    let per = total.div_ceil(parts).max(1);
    let mut out: Vec<_> = (0..parts)
        .map(|k| (per * k).min(total)..(per * (k + 1)).min(total))
        .filter(|r| !r.is_empty())
        .collect();
    if out.is_empty() {
        out.push(0..0);
    }
    out
}

/// Sends items `0..total` in batches of at most `batch` through `send`, which sends
/// the range it is given from its start and returns how many went (like `sendmmsg`).
///
/// `sendmmsg` stops at the first datagram the kernel refuses: a partial count means
/// the rest are retried from there, and an error means the first of the range
/// failed. That one is counted and skipped, so one bad destination cannot stall a
/// tick. `EAGAIN` (a full buffer on a socket that does not block) is a failure
/// too: a snapshot is superseded by the next tick's, so waiting would only delay
/// the tick. `EINTR` is retried.
pub fn send_in_batches(
    total: usize,
    batch: usize,
    mut send: impl FnMut(Range<usize>) -> nix::Result<usize>,
) -> SendStats {
    let mut stats = SendStats::default();
    let mut next = 0;
    while next < total {
        let end = total.min(next + batch.max(1));
        match send(next..end) {
            Ok(n) if n > 0 => {
                let n = n.min(end - next);
                stats.sent += n as u64;
                next += n;
            }
            Err(Errno::EINTR) => {}
            // An error, or no progress at all: the first datagram is the culprit.
            _ => {
                stats.failed += 1;
                next += 1;
            }
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    #[test]
    fn partial_sends_resume_where_the_kernel_stopped() {
        let mut calls = Vec::new();
        // Takes at most 5 per call, refuses item 7 when it comes first, is
        // interrupted once.
        let mut interrupted = false;
        let stats = send_in_batches(23, 8, |range| {
            calls.push(range.clone());
            if range.start == 13 && !interrupted {
                interrupted = true;
                return Err(Errno::EINTR);
            }
            if range.start == 7 {
                return Err(Errno::ECONNREFUSED);
            }
            let stop_at_7 = if range.contains(&7) { 7 } else { range.end };
            Ok((stop_at_7 - range.start).min(5))
        });
        assert_eq!(
            stats,
            SendStats {
                sent: 22,
                failed: 1
            }
        );
        assert_eq!(
            calls,
            [0..8, 5..13, 7..15, 8..16, 13..21, 13..21, 18..23],
            "resumed after each partial send, skipped 7, retried 13 after EINTR"
        );
    }

    #[test]
    fn errors_and_no_progress_skip_one_item_each() {
        let stats = send_in_batches(3, 64, |_| Err(Errno::EAGAIN));
        assert_eq!(stats, SendStats { sent: 0, failed: 3 });
        let stats = send_in_batches(2, 64, |_| Ok(0));
        assert_eq!(stats, SendStats { sent: 0, failed: 2 });
        let stats = send_in_batches(0, 64, |_| unreachable!());
        assert_eq!(stats, SendStats::default());
    }

    #[test]
    fn shares_cover_everything_once_and_are_not_too_small() {
        assert_eq!(shares(5000, 2, 512), [0..2500, 2500..5000]);
        assert_eq!(shares(5001, 3, 512), [0..1667, 1667..3334, 3334..5001]);
        // Too few datagrams for a second thread.
        assert_eq!(shares(600, 2, 512), [0..300, 300..600]);
        let one = |r: std::ops::Range<usize>| vec![r];
        assert_eq!(shares(500, 4, 512), one(0..500));
        assert_eq!(shares(0, 2, 512), one(0..0));
        assert_eq!(shares(7, 0, 0), one(0..7));
    }

    #[test]
    fn shares_sent_from_two_threads_arrive_once_each() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut out = Outbox::default();
        // Few enough for the client's default receive buffer.
        for i in 0..150 {
            out.begin();
            write!(out.writer(), "{i}").unwrap();
            out.send_to(client.local_addr().unwrap());
        }
        let parts = shares(out.len(), 2, 50);
        assert_eq!(parts.len(), 2);
        let stats: Vec<SendStats> = std::thread::scope(|scope| {
            let handles: Vec<_> = parts
                .iter()
                .map(|r| {
                    let (server, out, r) = (&server, &out, r.clone());
                    scope.spawn(move || Sender::default().send_range(server, out, r))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(stats.iter().map(|s| s.sent).sum::<u64>(), 150);
        let mut receiver = Receiver::default();
        let mut got = Vec::new();
        while got.len() < 150 {
            receiver
                .recv(&client, |bytes, _| {
                    got.push(
                        std::str::from_utf8(bytes)
                            .unwrap()
                            .parse::<usize>()
                            .unwrap(),
                    )
                })
                .unwrap();
        }
        got.sort_unstable();
        assert_eq!(got, (0..150).collect::<Vec<_>>());
    }

    #[test]
    fn a_tick_of_datagrams_round_trips_in_batches() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let to = client.local_addr().unwrap();
        // More than two batches, of varying sizes (one empty).
        let mut out = Outbox::default();
        for i in 0..150 {
            out.begin();
            write!(out.writer(), "{}", "x".repeat(i % 40)).unwrap();
            out.send_to(to);
        }
        let stats = Sender::default().send(&server, &out);
        assert_eq!(
            stats,
            SendStats {
                sent: 150,
                failed: 0
            }
        );
        let mut receiver = Receiver::default();
        let mut got = Vec::new();
        while got.len() < 150 {
            receiver
                .recv(&client, |bytes, from| got.push((bytes.len(), from)))
                .unwrap();
        }
        let expected: Vec<_> = (0..150)
            .map(|i| (i % 40, server.local_addr().unwrap()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn an_oversized_datagram_arrives_truncated_past_the_limit() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = server.local_addr().unwrap();
        client.send_to(&vec![b'a'; 5000], to).unwrap();
        client.send_to(b"ok", to).unwrap();
        let mut receiver = Receiver::default();
        let mut got = Vec::new();
        while got.len() < 2 {
            receiver
                .recv(&server, |bytes, _| got.push(bytes.len()))
                .unwrap();
        }
        assert_eq!(got, [MAX_DATAGRAM + 1, 2]);
    }

    #[test]
    fn an_idle_socket_times_out_with_eagain() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let got = Receiver::default().recv(&socket, |_, _| panic!("nothing was sent"));
        assert_eq!(got, Err(Errno::EAGAIN));
    }
}
