//! What one tick sends: every message serialized once into one buffer, and the list of
//! (address, message) pairs to send. Reused from tick to tick, so a steady-state tick
//! allocates nothing for its snapshots.

use std::io::Write;
use std::net::SocketAddr;
use std::ops::Range;

#[derive(Default)]
pub struct Outbox {
    buf: Vec<u8>,
    sends: Vec<(SocketAddr, Range<usize>)>,
    open: usize,
}

impl Outbox {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.sends.clear();
        self.open = 0;
    }

    /// Starts a message; write it with [`Outbox::writer`], then address it with
    /// [`Outbox::send_to`] as many times as it has recipients.
    pub fn begin(&mut self) {
        self.open = self.buf.len();
    }

    /// The open message's buffer: a `Vec`, so hot writers can append bytes
    /// directly instead of going through `write!`.
    pub fn writer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    pub fn send_to(&mut self, addr: SocketAddr) {
        self.sends.push((addr, self.open..self.buf.len()));
    }

    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }

    pub fn len(&self) -> usize {
        self.sends.len()
    }

    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// The `i`th datagram to send, `i < len()`.
    pub fn get(&self, i: usize) -> (SocketAddr, &[u8]) {
        let (addr, range) = &self.sends[i];
        (*addr, &self.buf[range.clone()])
    }

    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.sends
            .iter()
            .map(|(addr, range)| (*addr, &self.buf[range.clone()]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_many_recipients() {
        let mut out = Outbox::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        out.begin();
        out.writer().write_all(b"hello").unwrap();
        out.send_to(a);
        out.send_to(b);
        out.begin();
        out.writer().write_all(b"bye").unwrap();
        out.send_to(a);
        let got: Vec<_> = out.iter().map(|(addr, m)| (addr, m.to_vec())).collect();
        assert_eq!(
            got,
            [
                (a, b"hello".to_vec()),
                (b, b"hello".to_vec()),
                (a, b"bye".to_vec())
            ]
        );
        assert_eq!(out.bytes(), 8, "serialized once");
        out.clear();
        assert!(out.is_empty());
    }
}

/// Appends `n` in decimal, the text of `write!(buf, "{n}")` without the formatting
/// machinery, which was most of a tick at 5,000 players (a few numbers per tank
/// per tick). Three digits at a time, each group an append of a fixed length,
/// which compiles to a few stores where a loop of `push`es or an append of a
/// variable length (a `memcpy` call) cost a quarter of the tick.
pub fn write_u64(buf: &mut Vec<u8>, n: u64) {
    let digit = |d: u64| b'0' + (d % 10) as u8;
    match n {
        0..=9 => buf.push(digit(n)),
        10..=99 => buf.extend_from_slice(&[digit(n / 10), digit(n)]),
        100..=999 => buf.extend_from_slice(&[digit(n / 100), digit(n / 10), digit(n)]),
        _ => {
            write_u64(buf, n / 1000);
            let low = n % 1000;
            buf.extend_from_slice(&[digit(low / 100), digit(low / 10), digit(low)]);
        }
    }
}

/// [`write_u64`] for signed numbers.
pub fn write_i64(buf: &mut Vec<u8>, n: i64) {
    if n < 0 {
        buf.push(b'-');
    }
    write_u64(buf, n.unsigned_abs());
}

/// Writes a coordinate kept to 1/100 (see `rules`) as `123.45`, `7.5` or `100`:
/// integer formatting instead of the shortest-float algorithm, which was the
/// largest cost of a tick (four coordinates per tank per tick).
pub fn write_coord(buf: &mut Vec<u8>, v: f64) {
    let cents = (v * 100.0).round();
    if !cents.is_finite() || cents.abs() >= 9e15 {
        let _ = write!(buf, "{v}");
        return;
    }
    let cents = cents as i64;
    if cents < 0 {
        buf.push(b'-');
    }
    let (whole, frac) = (cents.unsigned_abs() / 100, cents.unsigned_abs() % 100);
    write_u64(buf, whole);
    match frac {
        0 => {}
        f if f % 10 == 0 => buf.extend_from_slice(&[b'.', b'0' + (f / 10) as u8]),
        f => buf.extend_from_slice(&[b'.', b'0' + (f / 10) as u8, b'0' + (f % 10) as u8]),
    }
}

#[cfg(test)]
mod coord_tests {
    use super::write_coord;

    #[test]
    fn coordinates_print_like_shortest_floats() {
        for v in [
            0.0, 100.0, 123.45, 7.5, 0.05, 999.99, -3.2, -0.05, 0.1, 1000.0, 12.3,
        ] {
            let mut out = Vec::new();
            write_coord(&mut out, v);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text.parse::<f64>().unwrap(), v, "{text}");
            assert_eq!(text, format!("{v}"), "same text as the shortest float");
        }
    }

    #[test]
    fn integers_print_like_display() {
        use super::{write_i64, write_u64};
        for n in [
            0,
            7,
            10,
            99,
            100,
            999,
            1000,
            1001,
            12345,
            1_000_000,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
        for n in [0, -1, 25, -100, i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            write_i64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }
}
