//! Two nodes of a cluster on one fake clock: each a [`Net`] (a core and its clients), with
//! what signaling and the cluster glue would carry between them (relay offers, answers and
//! ends) passed by direct calls, and the relays' datagrams over the simulated network. Node
//! "a" is at 10.0.0.1, node "b" at 10.0.0.2; a relay's own socket at the connecting node
//! (`Transport::Relay`) gets an address of its own, as the driver's per-relay sockets do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::Net;
use crate::{MediaCommand, MediaEvent, Output, Transport};

/// The nodes' names, as the relay commands give them.
pub const NODES: [&str; 2] = ["a", "b"];

/// Two nodes of a cluster: [`Pair::nodes`]`[0]` is "a", `[1]` is "b".
pub struct Pair {
    pub nodes: [Net; 2],
    /// A relay socket's address -> (its node, its relay id).
    sockets: HashMap<SocketAddr, (usize, u64)>,
    by_relay: HashMap<(usize, u64), SocketAddr>,
    /// Relay ends each node reported: (node, the other node, it was the sending end).
    pub relay_ended: Vec<(usize, String, bool)>,
}

impl Default for Pair {
    fn default() -> Self {
        Pair::new()
    }
}

impl Pair {
    pub fn new() -> Pair {
        let server = |i: u8| SocketAddr::from(([10, 0, 0, i], 7882));
        let mut a = Net::at(server(1), 1, usize::MAX);
        let mut b = Net::at(server(2), 2, usize::MAX);
        a.relaying = true;
        b.relaying = true;
        b.now = a.now;
        Pair {
            nodes: [a, b],
            sockets: HashMap::new(),
            by_relay: HashMap::new(),
            relay_ended: Vec::new(),
        }
    }

    /// Node `n`'s core gets `command`, and everything moves.
    pub fn command(&mut self, n: usize, command: MediaCommand) {
        self.nodes[n].send_command(command);
        self.pump();
    }

    /// Deliver until nothing moves on either node or between them.
    pub fn pump(&mut self) {
        loop {
            for net in &mut self.nodes {
                net.pump();
            }
            let mut moved = false;
            for n in 0..2 {
                for output in std::mem::take(&mut self.nodes[n].outbox) {
                    moved = true;
                    self.carry(n, output);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Advance both nodes' clocks by `dt`, running their timers and delivering everything.
    pub fn step(&mut self, dt: Duration) {
        for net in &mut self.nodes {
            net.step(dt);
        }
        self.pump();
    }

    /// Step `dt` at a time until `done` holds; panics after `limit` of simulated time.
    pub fn run_until(&mut self, limit: Duration, dt: Duration, done: impl Fn(&Pair) -> bool) {
        let end = self.nodes[0].now + limit;
        while !done(self) {
            assert!(
                self.nodes[0].now < end,
                "not done after {limit:?} of simulated time"
            );
            self.step(dt);
        }
    }

    /// What node `n` sent out of itself: to the other node, as signaling or the network
    /// would carry it.
    fn carry(&mut self, n: usize, output: Output) {
        let other = 1 - n;
        let now = self.nodes[n].now;
        match output {
            Output::Transmit(t) => {
                if let Transport::Relay(relay) = t.transport {
                    let next = self.sockets.len() as u16;
                    let from = *self.by_relay.entry((n, relay)).or_insert_with(|| {
                        SocketAddr::from(([10, 0, 100 + n as u8, 1], 30_000 + next))
                    });
                    self.sockets.insert(from, (n, relay));
                    if t.to == self.nodes[other].server {
                        self.nodes[other].core.handle_datagram(now, from, &t.data);
                    }
                } else if let Some(&(m, relay)) = self.sockets.get(&t.to) {
                    if m == other {
                        let from = self.nodes[n].server;
                        self.nodes[m]
                            .core
                            .handle_relay_datagram(now, from, relay, &t.data);
                    }
                } else {
                    self.nodes[n].stray.push(t.to);
                }
            }
            Output::Event(MediaEvent::RelayOffer {
                room,
                sdp,
                offer_id,
                fresh,
                ..
            }) => self.nodes[other].core.handle_command(
                now,
                MediaCommand::RelayOffer {
                    room,
                    node: NODES[n].to_owned(),
                    sdp,
                    offer_id,
                    fresh,
                },
            ),
            Output::Event(MediaEvent::RelayAnswer {
                room,
                sdp,
                offer_id,
                ..
            }) => self.nodes[other].core.handle_command(
                now,
                MediaCommand::RelayAnswer {
                    room,
                    node: NODES[n].to_owned(),
                    sdp,
                    offer_id,
                },
            ),
            Output::Event(MediaEvent::RelayEnded { node, sending, .. }) => {
                self.relay_ended.push((n, node, sending));
            }
            _ => {}
        }
    }
}
