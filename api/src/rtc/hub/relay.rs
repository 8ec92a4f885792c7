//! `signal` relay: from a member to another member of the same channel, on this instance
//! or, with shared membership, through the bus to the instance holding it; the signal
//! budget of a sender and what happens when a receiver cannot keep up.
//!
//! ```text
//!   signal{to} ──> budget? ──> to here ──────> Send{to, signal{from}}
//!                          └─> to elsewhere ─> Publish{instance, Signal} ─> (other hub)
//!                          └─> nowhere ─────> error peer_not_found (the socket stays)
//!   Bus(Signal) ──> to here: delivered; joining: held; else Publish Undeliverable
//!   Bus(Undeliverable) ──> peer_not_found; Unpublished(Signal) ──> relay_failed
//! ```

use protocol::signaling::{ServerMessage, SignalPayload, codes};

use super::limits::SIGNAL_BURST;
use super::membership::{Held, Place};
use super::{BusMessage, ConnId, Hub, InstanceId, Output, close_code};
use crate::domain::{ChannelName, Uid};

impl Hub {
    /// Counts a `signal` of `bytes` against the socket's signal budget; false (and the
    /// sender cut off with `signal_flood`) when it is over.
    pub(super) fn charge_signal(&mut self, now: i64, conn: ConnId, bytes: usize) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.budget.signal(&self.cfg, now, bytes) {
            return true;
        }
        let msgs = self.cfg.signals_per_sec;
        let rate = self.cfg.signal_bytes_per_sec;
        self.fail(
            conn,
            codes::SIGNAL_FLOOD,
            &format!(
                "signals over the budget of {msgs} messages and {rate} bytes per second \
                 (bursts of {SIGNAL_BURST}x)"
            ),
            close_code::POLICY,
        );
        false
    }

    /// A member's `signal` to `to`: delivered here, published to the instance holding
    /// `to`, or answered `peer_not_found`.
    pub(super) fn on_signal(
        &mut self,
        conn: ConnId,
        channel: &ChannelName,
        from: &Uid,
        to: &str,
        payload: SignalPayload,
    ) {
        let place = match Uid::parse(to) {
            Ok(to) if &to != from => self.membership.locate(channel, &to).map(|p| (to, p)),
            _ => None,
        };
        match place {
            Some((_, Place::Here(target))) => self.send(
                target,
                ServerMessage::Signal {
                    from: from.to_string(),
                    payload,
                },
            ),
            Some((to, Place::Elsewhere { instance, me })) => self.out.push_back(Output::Publish {
                to: instance,
                message: BusMessage::Signal {
                    channel: channel.clone(),
                    from: from.clone(),
                    to,
                    payload,
                    reply_to: me,
                },
            }),
            None => self.peer_not_found(conn, to),
        }
    }

    fn peer_not_found(&mut self, conn: ConnId, to: &str) {
        let shown: String = to.chars().take(64).collect();
        self.send(
            conn,
            ServerMessage::error(
                codes::PEER_NOT_FOUND,
                format!("no peer {shown:?} in this channel"),
            ),
        );
    }

    /// A signal from another instance: delivered to its member here, held while its join
    /// is being recorded, or answered `Undeliverable`.
    pub(super) fn on_relayed(
        &mut self,
        channel: &ChannelName,
        from: &Uid,
        to: &Uid,
        payload: &SignalPayload,
        reply_to: &InstanceId,
    ) {
        if let Some(conn) = self.membership.room(channel).and_then(|r| r.conn_of(to)) {
            self.send(
                conn,
                ServerMessage::Signal {
                    from: from.to_string(),
                    payload: payload.clone(),
                },
            );
            return;
        }
        let holder = self.shared().and_then(|s| s.holder(channel, to));
        if let Some(held) = holder {
            held.push(Held {
                from: from.clone(),
                payload: payload.clone(),
                reply_to: reply_to.clone(),
            });
            return;
        }
        self.out.push_back(Output::Publish {
            to: reply_to.clone(),
            message: BusMessage::Undeliverable {
                channel: channel.clone(),
                from: from.clone(),
                to: to.clone(),
            },
        });
    }

    /// The instance a signal of `from` went to no longer holds `to`.
    pub(super) fn on_undeliverable(&mut self, channel: &ChannelName, from: &Uid, to: &Uid) {
        if let Some(conn) = self.membership.room(channel).and_then(|r| r.conn_of(from)) {
            self.peer_not_found(conn, to.as_str());
        }
    }

    /// A publication could not be sent. Only a signal has a sender to tell; a lost kick
    /// or answer is logged by the driver.
    pub(super) fn on_unpublished(&mut self, message: &BusMessage) {
        if let BusMessage::Signal {
            channel, from, to, ..
        } = message
            && let Some(conn) = self.membership.room(channel).and_then(|r| r.conn_of(from))
        {
            let to = to.as_str();
            self.send(
                conn,
                ServerMessage::error(
                    codes::RELAY_FAILED,
                    format!("the signal to {to:?} could not be relayed; send it again"),
                ),
            );
        }
    }

    /// A signal from `from` could not be queued for `conn`, whose queue is filling up
    /// with signals: the sender is cut off, the receiver stays.
    pub(super) fn on_flooded(&mut self, conn: ConnId, from: &str) {
        let Some(channel) = self
            .conns
            .get(&conn)
            .and_then(|c| c.phase.member())
            .map(|(channel, _)| channel.clone())
        else {
            return;
        };
        let Ok(from) = Uid::parse(from) else {
            return;
        };
        match self.membership.locate(&channel, &from) {
            Some(Place::Here(sender)) => self.fail(
                sender,
                codes::SIGNAL_FLOOD,
                "signals sent faster than their receiver reads them",
                close_code::POLICY,
            ),
            Some(Place::Elsewhere { .. }) => {
                self.kick(&channel, &from, codes::SIGNAL_FLOOD);
            }
            None => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use crate::rtc::hub::testkit::*;

    #[test]
    fn signal_is_relayed_with_from_only_to_the_target() {
        let mut h = hub();
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (b, _) = join(&mut h, T0, "c1", "bob");
        let (c, _) = join(&mut h, T0, "c1", "carol");
        let out = text(&mut h, T0, b, &offer_to("alice"));
        assert_eq!(
            out,
            vec![Output::Send {
                conn: a,
                message: ServerMessage::Signal {
                    from: "bob".into(),
                    payload: SignalPayload::Description(SessionDescription {
                        kind: SdpType::Offer,
                        sdp: "v=0\r\n".into()
                    })
                }
            }]
        );
        let cand = ClientMessage::Signal {
            to: "bob".into(),
            payload: SignalPayload::Candidate(Some(IceCandidate {
                candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_mline_index: Some(0),
                username_fragment: None,
            })),
        };
        let out = text(&mut h, T0, a, &cand.to_json());
        assert_eq!(sent_to(&out, b).len(), 1);
        assert!(sent_to(&out, c).is_empty());
        let end = r#"{"type":"signal","to":"bob","candidate":null}"#;
        let out = text(&mut h, T0, c, end);
        assert_eq!(
            sent_to(&out, b),
            vec![ServerMessage::Signal {
                from: "carol".into(),
                payload: SignalPayload::Candidate(None)
            }]
        );
    }

    #[test]
    fn relay_to_an_absent_peer_is_an_error_and_the_socket_stays() {
        let mut h = hub();
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (_x, _) = join(&mut h, T0, "c2", "xavier");
        for to in ["nobody", "xavier", "alice", "", "\u{1}"] {
            let out = text(&mut h, T0, a, &offer_to(to));
            assert_eq!(
                error_code(&out, a).as_deref(),
                Some(codes::PEER_NOT_FOUND),
                "{to:?}"
            );
            assert_eq!(closed(&out, a), None);
            assert_eq!(out.len(), 1, "nothing relayed for {to:?}");
        }
        assert_eq!(h.present(&ch("c1")), vec![uid("alice")]);
    }

    #[test]
    fn a_signal_flood_cuts_off_its_sender() {
        let mut h = hub_with(HubConfig {
            signals_per_sec: 10,          // burst 40
            signal_bytes_per_sec: 10_000, // burst 40,000
            ..HubConfig::default()
        });
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (m, _) = join(&mut h, T0, "c1", "mallory");
        drain(&mut h);
        let big = offer_to_sized("alice", 9_000);
        // Four fit in the byte burst; the fifth cuts the sender off.
        for _ in 0..4 {
            let out = text(&mut h, T0, m, &big);
            assert_eq!(sent_to(&out, a).len(), 1);
        }
        let out = text(&mut h, T0, m, &big);
        assert!(sent_to(&out, a).contains(&ServerMessage::PeerLeft {
            uid: "mallory".into(),
            reason: LeaveReason::Kicked
        }));
        assert_eq!(error_code(&out, m).as_deref(), Some(codes::SIGNAL_FLOOD));
        assert_eq!(closed(&out, m), Some(close_code::POLICY));
        assert_eq!(closed(&out, a), None);
        // The message budget: 40 small signals at once, then cut off; refilled over time.
        let (m2, _) = join(&mut h, T0, "c1", "mal2");
        drain(&mut h);
        for i in 0..40 {
            let out = text(&mut h, T0 + i, m2, &offer_to("alice"));
            assert_eq!(sent_to(&out, a).len(), 1, "signal {i}");
        }
        let out = text(&mut h, T0 + 1_000, m2, &offer_to("alice"));
        assert_eq!(sent_to(&out, a).len(), 1, "10 more after a second");
        let out = text(&mut h, T0 + 10_000, m2, &offer_to("alice"));
        assert_eq!(sent_to(&out, a).len(), 1);
        for _ in 0..40 {
            text(&mut h, T0 + 10_000, m2, &offer_to("alice"));
        }
        assert_eq!(h.present(&ch("c1")), vec![uid("alice")]);
    }

    #[test]
    fn a_flooded_receiver_stays_and_the_sender_goes() {
        let mut h = hub();
        let (a, _) = join(&mut h, T0, "c1", "alice");
        let (m, _) = join(&mut h, T0, "c1", "mallory");
        let (b, _) = join(&mut h, T0, "c1", "bob");
        drain(&mut h);
        h.handle_input(
            T0,
            Input::Flooded {
                conn: a,
                from: "mallory",
            },
        );
        let out = drain(&mut h);
        assert_eq!(error_code(&out, m).as_deref(), Some(codes::SIGNAL_FLOOD));
        assert_eq!(closed(&out, m), Some(close_code::POLICY));
        assert_eq!(closed(&out, a), None);
        assert_eq!(h.present(&ch("c1")), vec![uid("alice"), uid("bob")]);
        // An unknown sender, or a receiver that is not a member: nothing happens.
        h.handle_input(
            T0,
            Input::Flooded {
                conn: a,
                from: "nobody",
            },
        );
        let stranger = h.open(T0);
        h.handle_input(
            T0,
            Input::Flooded {
                conn: stranger,
                from: "bob",
            },
        );
        assert!(drain(&mut h).is_empty());
        assert_eq!(h.present(&ch("c1")), vec![uid("alice"), uid("bob")]);
        let _ = b;
    }

    #[test]
    fn signals_cross_instances_and_come_back_when_undeliverable() {
        let mut h = bus_hub();
        joined_on(&mut h, row("c1", "bob", B, 1));
        let (a, _) = bus_join(&mut h, "c1", "alice", 2, vec![row("c1", "bob", B, 1)]);
        // To a member of another instance: published to that instance.
        let out = text(&mut h, T0, a, &offer_to("bob"));
        assert!(sent_to(&out, a).is_empty());
        assert_eq!(
            published(&out),
            vec![(
                inst(B),
                BusMessage::Signal {
                    channel: ch("c1"),
                    from: uid("alice"),
                    to: uid("bob"),
                    payload: offer_payload(),
                    reply_to: inst(A),
                }
            )]
        );
        // From another instance: delivered with `from`.
        let back = BusMessage::Signal {
            channel: ch("c1"),
            from: uid("bob"),
            to: uid("alice"),
            payload: SignalPayload::Candidate(None),
            reply_to: inst(B),
        };
        let out = bus(&mut h, back);
        assert_eq!(
            sent_to(&out, a),
            vec![ServerMessage::Signal {
                from: "bob".into(),
                payload: SignalPayload::Candidate(None)
            }]
        );
        // For someone not here: answered to the sender's instance.
        let lost = BusMessage::Signal {
            channel: ch("c1"),
            from: uid("bob"),
            to: uid("zed"),
            payload: offer_payload(),
            reply_to: inst(B),
        };
        assert_eq!(
            published(&bus(&mut h, lost)),
            vec![(
                inst(B),
                BusMessage::Undeliverable {
                    channel: ch("c1"),
                    from: uid("bob"),
                    to: uid("zed"),
                }
            )]
        );
        // The answer to alice's signal when bob had gone: peer_not_found, socket stays.
        let out = bus(
            &mut h,
            BusMessage::Undeliverable {
                channel: ch("c1"),
                from: uid("alice"),
                to: uid("bob"),
            },
        );
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::PEER_NOT_FOUND));
        assert_eq!(closed(&out, a), None);
        // A publication that could not be sent: relay_failed, socket stays.
        let (_, m) = published(&text(&mut h, T0, a, &offer_to("bob"))).remove(0);
        h.handle_input(T0, Input::Unpublished(&m));
        let out = drain(&mut h);
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::RELAY_FAILED));
        assert_eq!(closed(&out, a), None);
        // Present nowhere: peer_not_found at once, nothing published.
        let out = text(&mut h, T0, a, &offer_to("nobody"));
        assert_eq!(error_code(&out, a).as_deref(), Some(codes::PEER_NOT_FOUND));
        assert!(published(&out).is_empty());
    }
}
