//! ICE-TCP for clients whose network blocks UDP: the TCP connections one event loop holds on the
//! media port (passive, RFC 6544), with RFC 4571 framing and a bounded send queue each.
//!
//! A client connects and sends a STUN check; its ufrag names the loop that owns the connection
//! (as for UDP), so a connection accepted by another loop is handed over whole. Until the core
//! adopts it ([`crate::Output::Connect`]) a connection is *pending*: few may be, and not for
//! long. What a slow reader cannot take piles up in its own queue, never in the loop: past
//! [`VIDEO_LIMIT`] queued bytes video is dropped (and a keyframe asked for), past
//! [`QUEUE_LIMIT`] everything is.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

/// Queued bytes past which a connection drops video: about a fifth of a second of a full room's
/// video on top of the kernel's buffer.
pub(crate) const VIDEO_LIMIT: usize = 128 * 1024;
/// Queued bytes past which a connection drops everything: its client has stopped reading.
pub(crate) const QUEUE_LIMIT: usize = 512 * 1024;
/// The kernel's send buffer of each connection. A fixed size (no autotuning up to megabytes)
/// keeps the queue that decides what to drop in this process, where audio goes first.
const SEND_BUFFER: usize = 256 * 1024;
/// The longest frame taken: media and DTLS records fit in a datagram, so a longer one is an
/// attack or garbage, and the connection is closed.
pub(crate) const MAX_FRAME: usize = 4096;
/// Connections a loop holds that no connection here has adopted yet; past it the oldest is
/// closed.
pub(crate) const MAX_PENDING: usize = 128;
/// How long a connection may stay pending.
pub(crate) const PENDING_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from one connection in one go.
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// One TCP connection of the media port.
pub(crate) struct TcpConn {
    stream: TcpStream,
    pub(crate) peer: SocketAddr,
    /// Bytes read and not yet taken as frames, from `taken` on.
    inbox: Vec<u8>,
    taken: usize,
    /// Where the last frame taken starts, to put it back ([`TcpConn::unread_last`]).
    last: usize,
    /// Framed bytes not yet written, from `sent` on.
    out: Vec<u8>,
    sent: usize,
    /// Accepted when, while no connection has adopted it.
    pub(crate) pending_since: Option<Instant>,
}

/// What [`TcpConns::send`] did with a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Written or queued.
    Taken,
    /// A video packet dropped: the queue is past [`VIDEO_LIMIT`].
    VideoDropped,
    /// Dropped: the queue is past [`QUEUE_LIMIT`], or the frame cannot be framed.
    Dropped,
    /// No open connection to that address.
    NoConnection,
}

/// A frame longer than [`MAX_FRAME`].
#[derive(Debug)]
pub(crate) struct FrameTooLong;

/// What one read from a connection gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Filled {
    /// A whole chunk: the connection may have more.
    More,
    /// Everything available was read.
    Drained,
    /// Closed by the client, failed, or broke the framing rules.
    Closed,
}

impl TcpConn {
    pub(crate) fn new(stream: TcpStream, peer: SocketAddr, now: Instant) -> TcpConn {
        // Each frame is a packet someone waits for: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
        TcpConn {
            stream,
            peer,
            inbox: Vec::new(),
            taken: 0,
            last: 0,
            out: Vec::new(),
            sent: 0,
            pending_since: Some(now),
        }
    }

    /// A connection handed over by another loop, with the bytes that loop read from it.
    pub(crate) fn handed_over(
        stream: std::net::TcpStream,
        peer: SocketAddr,
        read: &[u8],
        now: Instant,
    ) -> TcpConn {
        let mut conn = TcpConn::new(TcpStream::from_std(stream), peer, now);
        conn.inbox.extend_from_slice(read);
        conn
    }

    /// Give the socket and what was read of it (whole frames and a partial one) to another
    /// loop.
    pub(crate) fn into_parts(
        mut self,
        registry: &Registry,
    ) -> (std::net::TcpStream, SocketAddr, Vec<u8>) {
        let _ = registry.deregister(&mut self.stream);
        let rest = self.inbox.split_off(self.taken);
        let fd = std::os::fd::OwnedFd::from(self.stream);
        (std::net::TcpStream::from(fd), self.peer, rest)
    }

    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> std::io::Result<()> {
        registry.register(
            &mut self.stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }

    /// Read one chunk into the inbox; take its frames with [`TcpConn::next_frame`].
    pub(crate) fn fill(&mut self, buf: &mut [u8]) -> Filled {
        // What was taken is gone: the inbox keeps at most a partial frame before a read.
        if self.taken > 0 {
            self.inbox.drain(..self.taken);
            self.taken = 0;
        }
        let chunk = buf.len().min(READ_CHUNK);
        match self.stream.read(&mut buf[..chunk]) {
            Ok(0) => Filled::Closed,
            Ok(n) => {
                self.inbox.extend_from_slice(&buf[..n]);
                if n == chunk {
                    Filled::More
                } else {
                    Filled::Drained
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Filled::Drained,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Filled::More,
            Err(_) => Filled::Closed,
        }
    }

    /// The next complete frame (RFC 4571: a 16-bit length, then that many bytes), if the
    /// inbox holds one. `Err` when a frame declares more than [`MAX_FRAME`]: the connection
    /// must close, so the inbox never holds more than a frame and a chunk.
    pub(crate) fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameTooLong> {
        let rest = &self.inbox[self.taken..];
        if rest.len() < 2 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        if len > MAX_FRAME {
            return Err(FrameTooLong);
        }
        if rest.len() < 2 + len {
            return Ok(None);
        }
        self.last = self.taken;
        let start = self.taken + 2;
        self.taken = start + len;
        Ok(Some(&self.inbox[start..start + len]))
    }

    /// Bytes read and not yet taken as frames.
    pub(crate) fn unread(&self) -> usize {
        self.inbox.len() - self.taken
    }

    /// Put the last frame taken back, for the loop this connection is handed to.
    pub(crate) fn unread_last(&mut self) {
        self.taken = self.last;
    }

    /// Queue `data` as one frame and write what the socket takes.
    pub(crate) fn send(&mut self, data: &[u8], video: bool) -> Sent {
        let queued = self.out.len() - self.sent;
        if queued >= QUEUE_LIMIT || data.len() > u16::MAX as usize {
            return Sent::Dropped;
        }
        if video && queued >= VIDEO_LIMIT {
            return Sent::VideoDropped;
        }
        self.out
            .extend_from_slice(&(data.len() as u16).to_be_bytes());
        self.out.extend_from_slice(data);
        // Written at once when nothing waits: most frames never stay queued.
        if queued == 0 {
            self.flush();
        }
        Sent::Taken
    }

    /// Write queued bytes until the socket would block; false when the connection failed.
    pub(crate) fn flush(&mut self) -> bool {
        while self.sent < self.out.len() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(0) => return false,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        } else if self.sent >= self.out.len() / 2 {
            // Keep the buffer from growing with what is already written.
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        true
    }
}

/// The listener of one loop and the connections it holds.
pub(crate) struct TcpConns {
    pub(crate) listener: Option<TcpListener>,
    pub(crate) by_token: HashMap<Token, TcpConn>,
    pub(crate) by_peer: HashMap<SocketAddr, Token>,
}

impl TcpConns {
    pub(crate) fn new(listener: Option<TcpListener>) -> TcpConns {
        TcpConns {
            listener,
            by_token: HashMap::new(),
            by_peer: HashMap::new(),
        }
    }

    pub(crate) fn pending(&self) -> usize {
        self.by_token
            .values()
            .filter(|c| c.pending_since.is_some())
            .count()
    }

    /// The connection pending longest. A client sends its check the moment it connects, so at
    /// the cap the oldest pending one is the likeliest to be idle: closing it (rather than
    /// refusing the newcomer) means idle connections cannot keep real clients out.
    pub(crate) fn oldest_pending(&self) -> Option<Token> {
        self.by_token
            .iter()
            .filter_map(|(t, c)| c.pending_since.map(|since| (since, *t)))
            .min()
            .map(|(_, t)| t)
    }

    pub(crate) fn insert(&mut self, token: Token, conn: TcpConn) {
        self.by_peer.insert(conn.peer, token);
        self.by_token.insert(token, conn);
    }

    pub(crate) fn remove(&mut self, token: Token, registry: &Registry) -> Option<TcpConn> {
        let mut conn = self.by_token.remove(&token)?;
        if self.by_peer.get(&conn.peer) == Some(&token) {
            self.by_peer.remove(&conn.peer);
        }
        conn.deregister(registry);
        Some(conn)
    }

    /// Send one frame to the connection from `peer`.
    pub(crate) fn send(&mut self, peer: SocketAddr, data: &[u8], video: bool) -> Sent {
        match self
            .by_peer
            .get(&peer)
            .and_then(|t| self.by_token.get_mut(t))
        {
            Some(conn) => conn.send(data, video),
            None => Sent::NoConnection,
        }
    }

    /// When the connection pending longest reaches [`PENDING_TIMEOUT`].
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        self.by_token
            .values()
            .filter_map(|c| c.pending_since)
            .min()
            .map(|since| since + PENDING_TIMEOUT)
    }

    /// Connections pending for longer than [`PENDING_TIMEOUT`].
    pub(crate) fn expired(&self, now: Instant) -> Vec<Token> {
        self.by_token
            .iter()
            .filter(|(_, c)| {
                c.pending_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= PENDING_TIMEOUT)
            })
            .map(|(t, _)| *t)
            .collect()
    }
}

/// Bind one listener of the media port's TCP `SO_REUSEPORT` group (each loop accepts its share).
pub(crate) fn bind_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection from a loopback listener, and the client's end (which never reads unless
    /// the test does).
    fn pair() -> (TcpConn, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let client =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, peer) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        (
            TcpConn::new(TcpStream::from_std(server), peer, Instant::now()),
            client,
        )
    }

    fn framed(frames: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            out.extend_from_slice(&(f.len() as u16).to_be_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    /// Fill until the client's bytes are in (loopback delivers at once, but not synchronously).
    fn fill_all(conn: &mut TcpConn, want: usize) {
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(5);
        while conn.unread() < want {
            assert_ne!(conn.fill(&mut buf), Filled::Closed);
            assert!(Instant::now() < deadline, "bytes never arrived");
        }
    }

    #[test]
    fn frames_split_across_reads_come_out_whole_and_in_order() {
        let (mut conn, mut client) = pair();
        let bytes = framed(&[b"first", b"", b"third frame"]);
        // The first frame's header alone, then the rest.
        client.write_all(&bytes[..1]).expect("write");
        fill_all(&mut conn, 1);
        assert!(conn.next_frame().expect("ok").is_none());
        client.write_all(&bytes[1..]).expect("write");
        fill_all(&mut conn, bytes.len());
        assert_eq!(conn.next_frame().expect("ok"), Some(&b"first"[..]));
        assert_eq!(conn.next_frame().expect("ok"), Some(&b""[..]));
        // Put back and taken again: what a handover relies on.
        assert_eq!(conn.next_frame().expect("ok"), Some(&b"third frame"[..]));
        conn.unread_last();
        assert_eq!(conn.next_frame().expect("ok"), Some(&b"third frame"[..]));
        assert!(conn.next_frame().expect("ok").is_none());
    }

    #[test]
    fn a_frame_longer_than_the_cap_is_refused_before_it_is_buffered() {
        let (mut conn, mut client) = pair();
        client
            .write_all(&((MAX_FRAME + 1) as u16).to_be_bytes())
            .expect("write");
        fill_all(&mut conn, 2);
        assert!(conn.next_frame().is_err());
    }

    #[test]
    fn handed_over_bytes_keep_the_unread_frames_and_the_partial_one() {
        let (mut conn, mut client) = pair();
        let bytes = framed(&[b"check", b"dtls"]);
        client.write_all(&bytes).expect("write");
        client.write_all(&[0, 9, 1, 2]).expect("write");
        fill_all(&mut conn, bytes.len() + 4);
        assert_eq!(conn.next_frame().expect("ok"), Some(&b"check"[..]));
        conn.unread_last();
        let registry = mio::Poll::new().expect("poll");
        let (_, _, rest) = conn.into_parts(registry.registry());
        let mut expected = bytes.clone();
        expected.extend_from_slice(&[0, 9, 1, 2]);
        assert_eq!(rest, expected);
    }

    #[test]
    fn a_reader_that_stops_costs_video_first_then_everything_and_never_more_than_the_cap() {
        let (mut conn, _client) = pair();
        let packet = [0x80u8; 1200];
        let mut sent = 0usize;
        // Video until the queue passes its video limit (the kernel's buffer fills first).
        loop {
            match conn.send(&packet, true) {
                Sent::Taken => sent += 1,
                Sent::VideoDropped => break,
                other => panic!("{other:?}"),
            }
            assert!(sent < 10_000, "video never dropped");
        }
        assert!(conn.out.len() - conn.sent >= VIDEO_LIMIT);
        // Audio still goes in, up to the hard limit.
        let mut audio = 0usize;
        loop {
            match conn.send(&packet[..200], false) {
                Sent::Taken => audio += 1,
                Sent::Dropped => break,
                other => panic!("{other:?}"),
            }
            assert!(audio < 10_000, "nothing ever dropped");
        }
        assert!(audio > 0, "audio is taken while video is dropped");
        let queued = conn.out.len() - conn.sent;
        assert!(
            (QUEUE_LIMIT..QUEUE_LIMIT + 300).contains(&queued),
            "the queue stops at its cap: {queued}"
        );
        assert_eq!(conn.send(&packet, true), Sent::Dropped);
    }

    #[test]
    fn a_reader_that_reads_again_gets_every_queued_byte_in_order() {
        let (mut conn, mut client) = pair();
        let mut expected = Vec::new();
        for i in 0..400u32 {
            let packet = vec![(i % 251) as u8; 1000];
            if conn.send(&packet, false) == Sent::Taken {
                expected.extend_from_slice(&framed(&[&packet]));
            }
        }
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < expected.len() && Instant::now() < deadline {
            assert!(conn.flush());
            if let Ok(n) = client.read(&mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes differ");
    }
}
