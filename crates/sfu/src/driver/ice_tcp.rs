//! The loop's ICE-TCP side: accepting connections on the media port's TCP listener, holding
//! them pending until their first frame is a check for a connection here (or handing them to
//! the loop that owns it), reading their frames into the core, closing what stays silent, sends
//! garbage or names nobody. The connections themselves and their framing are `tcp.rs`'s.

use std::time::{Duration, Instant};

use mio::Token;
use tracing::debug;

use super::shared::Msg;
use super::{ACCEPTS, Driver};
use crate::Route;
use crate::tcp::{self, Filled, TcpConn};

impl Driver {
    /// Accept what the listener has (a bounded number per turn).
    pub(super) fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPTS {
            let Some(listener) = &self.tcp.listener else {
                return;
            };
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // Out of descriptors, say: the connection waits in the backlog.
                    debug!(error = %e, "tcp accept failed");
                    return;
                }
            };
            self.stats.tcp_accepted += 1;
            if !self.serves(peer) {
                self.stats.tcp_refused += 1;
                continue;
            }
            self.adopt_tcp(now, TcpConn::new(stream, peer, now), false);
        }
    }

    /// Register a connection with this loop; a handed-over one has frames read already.
    pub(super) fn adopt_tcp(&mut self, now: Instant, mut conn: TcpConn, read_already: bool) {
        if self.tcp.pending() >= tcp::MAX_PENDING
            && let Some(oldest) = self.tcp.oldest_pending()
        {
            self.close_tcp(now, oldest, true);
        }
        let token = Token(self.next_token);
        self.next_token += 1;
        if conn.register(self.poll.registry(), token).is_err() {
            self.stats.tcp_refused += 1;
            return;
        }
        self.tcp.insert(token, conn);
        if read_already {
            let (more, _) = self.take_frames(now, token, usize::MAX);
            if more && !self.readable.contains(&token) {
                self.readable.push(token);
            }
        }
    }

    /// Read one chunk from a TCP connection and feed its frames (at most `budget`) to the
    /// core. Returns whether the connection may have more, and how many frames were taken.
    pub(super) fn read_tcp(
        &mut self,
        now: Instant,
        token: Token,
        buf: &mut [u8],
        budget: usize,
    ) -> (bool, usize) {
        let Some(conn) = self.tcp.by_token.get_mut(&token) else {
            return (false, 0);
        };
        // Frames still waiting from the last turn are taken first, so the inbox never holds
        // more than one read beyond them.
        let read = if conn.unread() >= tcp::READ_CHUNK {
            Filled::More
        } else {
            conn.fill(buf)
        };
        match read {
            Filled::Closed => {
                self.close_tcp(now, token, false);
                (false, 0)
            }
            read => {
                // Frames left over the budget wait in the inbox: the token must come back next
                // turn even when the socket itself is drained (no new edge would bring it).
                let (left, frames) = self.take_frames(now, token, budget);
                (read == Filled::More || left, frames)
            }
        }
    }

    /// Feed the frames a connection holds to the core; returns whether frames were left (over
    /// `budget`) and how many were taken. A pending connection's check may name another loop
    /// (handed over) or nobody (closed).
    pub(super) fn take_frames(
        &mut self,
        now: Instant,
        token: Token,
        budget: usize,
    ) -> (bool, usize) {
        let mut taken = 0;
        loop {
            let Some(conn) = self.tcp.by_token.get_mut(&token) else {
                return (false, taken);
            };
            if taken >= budget {
                return (true, taken);
            }
            let (peer, pending) = (conn.peer, conn.pending_since.is_some());
            let frame = match conn.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return (false, taken),
                Err(tcp::FrameTooLong) => {
                    self.close_tcp(now, token, pending);
                    return (false, taken);
                }
            };
            taken += 1;
            let route = self.core.handle_tcp_frame(now, peer, frame);
            match route {
                Route::Handled => {}
                Route::Loop(owner) if pending => {
                    let live = crate::stun::server_ufrag(frame)
                        .is_some_and(|u| self.shared.ufrags.read().is_ok_and(|s| s.contains(u)));
                    conn.unread_last();
                    match self.shared.loops.get(owner).filter(|_| live) {
                        Some(l) => {
                            if let Some(conn) = self.tcp.remove(token, self.poll.registry()) {
                                let (stream, peer, read) = conn.into_parts(self.poll.registry());
                                self.stats.handed_over += 1;
                                l.send(Msg::Tcp(stream, peer, read));
                            }
                        }
                        None => self.close_tcp(now, token, true),
                    }
                    return (false, taken);
                }
                // Not a check, a check for no live connection, or nobody here knows the
                // connection: garbage.
                Route::Loop(_) | Route::Unknown | Route::Refused if pending => {
                    self.close_tcp(now, token, true);
                    return (false, taken);
                }
                Route::Refused => {}
                Route::Loop(_) | Route::Unknown => self.stats.dropped_unknown += 1,
            }
        }
    }

    /// A connection's queue can be written again; false when it failed (closed here).
    pub(super) fn tcp_writable(&mut self, now: Instant, token: Token) -> bool {
        let Some(conn) = self.tcp.by_token.get_mut(&token) else {
            return true;
        };
        if conn.flush() {
            return true;
        }
        self.close_tcp(now, token, false);
        false
    }

    pub(super) fn close_tcp(&mut self, now: Instant, token: Token, refused: bool) {
        if let Some(conn) = self.tcp.remove(token, self.poll.registry()) {
            if refused {
                self.stats.tcp_refused += 1;
            }
            self.core.handle_tcp_closed(now, conn.peer);
        }
    }

    /// When [`Driver::sweep_tcp`] has a pending connection to close: its deadline, but no
    /// sooner than the sweep's once-a-second pace (a deadline just missed must not make the
    /// loop spin until the next sweep).
    pub(super) fn tcp_sweep_due(&self) -> Option<Instant> {
        let expiry = self.tcp.next_expiry()?;
        Some(match self.tcp_swept {
            Some(t) => expiry.max(t + Duration::from_secs(1)),
            None => expiry,
        })
    }

    /// Close connections that stayed pending too long (looked at once a second).
    pub(super) fn sweep_tcp(&mut self, now: Instant) {
        if self
            .tcp_swept
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.tcp_swept = Some(now);
        for token in self.tcp.expired(now) {
            self.close_tcp(now, token, true);
        }
    }
}
