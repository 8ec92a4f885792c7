//! What the hub's tests share: tokens, made-up instants, sockets that join, and readers
//! of the outputs; with a bus, rows, claims and bus messages of other instances.

#![allow(clippy::unwrap_used)] // tests may unwrap

pub(super) use protocol::signaling::{
    ClientMessage, IceCandidate, LeaveReason, SdpType, ServerMessage, SessionDescription,
    SignalPayload, codes,
};
pub(super) use serde_json::json;

pub(super) use super::{
    ConnId, Hub, HubConfig, Input, LAPSED_REASON, Output, PresenceEvent, close_code,
};
pub(super) use crate::domain::{ChannelName, Uid};
pub(super) use crate::rtc::ice::IceConfig;
pub(super) use crate::rtc_wire::{BusMessage, Claim, InstanceId, PresenceRow};
pub(super) use crate::token::TokenIssuer;
use crate::token::TokenVersion;

pub(super) const APP: &str = "970CA35de60c44645bbae8a215061b33";
pub(super) const CERT: &str = "5CFd2fd1755d40ecb72977518be15d3b";
/// 2023-11-14, in ms.
pub(super) const T0: i64 = 1_700_000_000_000;

pub(super) fn issuer() -> TokenIssuer {
    TokenIssuer::new(APP.into(), CERT.into(), TokenVersion::V006, 600)
}

pub(super) fn hub_with(cfg: HubConfig) -> Hub {
    Hub::new(cfg, issuer(), IceConfig::none())
}

pub(super) fn hub() -> Hub {
    hub_with(HubConfig::default())
}

pub(super) fn ch(s: &str) -> ChannelName {
    ChannelName::parse(s).unwrap()
}

pub(super) fn uid(s: &str) -> Uid {
    Uid::parse(s).unwrap()
}

pub(super) fn token(channel: &str, u: &str) -> String {
    issuer().mint(channel, u, (T0 / 1000) as u64).unwrap()
}

pub(super) fn join_text(channel: &str, u: &str, token: &str) -> String {
    json!({"type":"join","appID":APP,"channel":channel,"uid":u,"token":token}).to_string()
}

pub(super) fn drain(h: &mut Hub) -> Vec<Output> {
    std::iter::from_fn(|| h.poll_output()).collect()
}

pub(super) fn text(h: &mut Hub, now: i64, conn: ConnId, t: &str) -> Vec<Output> {
    h.handle_input(now, Input::Text { conn, text: t });
    drain(h)
}

/// Opens a socket and joins it; returns the socket and the outputs of the join.
pub(super) fn join(h: &mut Hub, now: i64, channel: &str, u: &str) -> (ConnId, Vec<Output>) {
    let c = h.open(now);
    let out = text(h, now, c, &join_text(channel, u, &token(channel, u)));
    (c, out)
}

pub(super) fn sent_to(out: &[Output], conn: ConnId) -> Vec<ServerMessage> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { conn: c, message } if *c == conn => Some(message.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn closed(out: &[Output], conn: ConnId) -> Option<u16> {
    out.iter().find_map(|o| match o {
        Output::Close { conn: c, code } if *c == conn => Some(*code),
        _ => None,
    })
}

pub(super) fn error_code(out: &[Output], conn: ConnId) -> Option<String> {
    sent_to(out, conn).into_iter().find_map(|m| match m {
        ServerMessage::Error { code, .. } => Some(code),
        _ => None,
    })
}

pub(super) fn presence(out: &[Output]) -> Vec<(String, PresenceEvent)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Presence { uid, event, .. } => Some((uid.to_string(), *event)),
            _ => None,
        })
        .collect()
}

pub(super) fn offer_to_sized(to: &str, sdp_len: usize) -> String {
    json!({"type":"signal","to":to,"description":{"type":"offer","sdp":"x".repeat(sdp_len)}})
        .to_string()
}

pub(super) fn offer_to(to: &str) -> String {
    ClientMessage::Signal {
        to: to.into(),
        payload: SignalPayload::Description(SessionDescription {
            kind: SdpType::Offer,
            sdp: "v=0\r\n".into(),
        }),
    }
    .to_json()
}
// ------------------------------------------------------------------ with a bus

pub(super) const A: &str = "00000000000000aa";
pub(super) const B: &str = "00000000000000bb";
pub(super) const C: &str = "00000000000000cc";

pub(super) fn inst(s: &str) -> InstanceId {
    InstanceId::from_stored(s.into())
}

pub(super) fn bus_hub() -> Hub {
    Hub::with_bus(HubConfig::default(), issuer(), IceConfig::none(), inst(A))
}

pub(super) fn row(channel: &str, u: &str, i: &str, seq: i64) -> PresenceRow {
    PresenceRow {
        channel: ch(channel),
        uid: uid(u),
        instance: inst(i),
        seq,
    }
}

pub(super) fn bus(h: &mut Hub, m: BusMessage) -> Vec<Output> {
    h.handle_input(T0, Input::Bus(&m));
    drain(h)
}

pub(super) fn joined_on(h: &mut Hub, r: PresenceRow) -> Vec<Output> {
    bus(h, BusMessage::Joined(r))
}

pub(super) fn left_on(
    h: &mut Hub,
    r: PresenceRow,
    reason: LeaveReason,
    event_seq: i64,
) -> Vec<Output> {
    bus(
        h,
        BusMessage::Left {
            row: r,
            reason,
            event_seq,
        },
    )
}

/// Opens a socket and sends its join: the hub only asks for a claim.
pub(super) fn ask(h: &mut Hub, channel: &str, u: &str) -> ConnId {
    let c = h.open(T0);
    let out = text(h, T0, c, &join_text(channel, u, &token(channel, u)));
    assert_eq!(
        out,
        vec![Output::Claim {
            conn: c,
            channel: ch(channel),
            uid: uid(u),
        }]
    );
    c
}

pub(super) fn claimed(
    h: &mut Hub,
    conn: ConnId,
    channel: &str,
    u: &str,
    seq: i64,
    members: Vec<PresenceRow>,
) -> Vec<Output> {
    let claim = Claim {
        channel: ch(channel),
        uid: uid(u),
        seq,
        members,
    };
    h.handle_input(
        T0,
        Input::Claimed {
            conn,
            claim: &claim,
        },
    );
    drain(h)
}

/// Asks and claims; returns the socket and the outputs of the claim.
pub(super) fn bus_join(
    h: &mut Hub,
    channel: &str,
    u: &str,
    seq: i64,
    members: Vec<PresenceRow>,
) -> (ConnId, Vec<Output>) {
    let c = ask(h, channel, u);
    let out = claimed(h, c, channel, u, seq, members);
    (c, out)
}

pub(super) fn peers_of(out: &[Output], conn: ConnId) -> Vec<String> {
    sent_to(out, conn)
        .into_iter()
        .find_map(|m| match m {
            ServerMessage::Joined { peers, .. } => Some(peers),
            _ => None,
        })
        .expect("joined")
}

pub(super) fn published(out: &[Output]) -> Vec<(InstanceId, BusMessage)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Publish { to, message } => Some((to.clone(), message.clone())),
            _ => None,
        })
        .collect()
}

pub(super) fn released(out: &[Output]) -> Vec<(String, i64, LeaveReason)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Release {
                uid, seq, reason, ..
            } => Some((uid.to_string(), *seq, *reason)),
            _ => None,
        })
        .collect()
}

pub(super) fn offer_payload() -> SignalPayload {
    SignalPayload::Description(SessionDescription {
        kind: SdpType::Offer,
        sdp: "v=0\r\n".into(),
    })
}

pub(super) fn joined_msg(u: &str) -> ServerMessage {
    ServerMessage::PeerJoined { uid: u.into() }
}

pub(super) fn left_msg(u: &str, reason: LeaveReason) -> ServerMessage {
    ServerMessage::PeerLeft {
        uid: u.into(),
        reason,
    }
}
