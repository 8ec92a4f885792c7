//! The call state machine, sans-IO: a snapshot of a call and one input in, the changes
//! to write out. The store loads the snapshot inside a transaction, calls [`apply`],
//! and writes the [`Transition`] back in the same transaction.
//!
//! ```text
//!            event 1 / heartbeat of a callee
//!  ringing ---------------------------------> connected
//!     |                                           |
//!     | 1000, 1001, ring timeout, every callee    | 2 / 1007 / heartbeat expiry
//!     | rejected (1002/1003), nobody left         | of the last person
//!     v                                           v
//!   ended (end code kept) <-----------------------+
//! ```
//!
//! `call/msg` rows move 0 -> 1 (fetched by the callee) -> 2 (that person is done), never
//! backwards. An ended call never reopens: late or duplicate inputs are recorded on the
//! timeline and change nothing.

use crate::domain::{EventCode, MsgStatus, Uid};

/// The call's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// Created, callees ringing, nobody answered yet.
    Ringing,
    /// Two or more people talked.
    Connected,
    /// Over; the end code says why.
    Ended,
}

impl CallState {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ringing => "ringing",
            Self::Connected => "connected",
            Self::Ended => "ended",
        }
    }
    /// From the stored form; `None` for anything the store never writes.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ringing" => Some(Self::Ringing),
            "connected" => Some(Self::Connected),
            "ended" => Some(Self::Ended),
            _ => None,
        }
    }
}

/// A member's role in a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Placed the call.
    Caller,
    /// Was called.
    Callee,
    /// Joined otherwise (asked for a token, invited the robot, sent a heartbeat).
    Invited,
}

impl Role {
    /// Stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::Callee => "callee",
            Self::Invited => "invited",
        }
    }
    /// From the stored form; `None` for anything the store never writes.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "caller" => Some(Self::Caller),
            "callee" => Some(Self::Callee),
            "invited" => Some(Self::Invited),
            _ => None,
        }
    }
}

/// One member as the state machine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Who.
    pub uid: Uid,
    /// Caller, callee or invited.
    pub role: Role,
    /// Their `call/msg` status.
    pub status: MsgStatus,
    /// Whether they have been seen in the channel (caller from the start; others after a
    /// heartbeat, an event 1/2 or channel presence).
    pub joined: bool,
}

/// What the state machine needs to know of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSnapshot {
    /// Current state.
    pub state: CallState,
    /// Members.
    pub members: Vec<Member>,
}

/// Something that happened to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `call/event` from an app.
    Event {
        /// Reporter.
        uid: Uid,
        /// Code.
        code: EventCode,
    },
    /// `call/heartbeat` or channel presence: `uid` is in the channel.
    Seen {
        /// Who.
        uid: Uid,
    },
    /// `uid` left the channel on purpose (`leave` on `/rtc`, or kicked).
    Left {
        /// Who.
        uid: Uid,
    },
    /// The ring timeout passed (server).
    RingTimeout,
    /// `uid` sent no heartbeat and had no presence for the heartbeat timeout (server).
    HeartbeatExpired {
        /// Who.
        uid: Uid,
    },
}

/// Changes to write, produced by [`apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transition {
    /// New call state and end code, if the state changes.
    pub new_state: Option<(CallState, Option<i64>)>,
    /// Members to add (unknown uids reporting in a channel become `Invited`).
    pub add_members: Vec<(Uid, Role)>,
    /// Status changes, only ever forward.
    pub status_changes: Vec<(Uid, MsgStatus)>,
    /// Members now seen in the channel.
    pub joined: Vec<Uid>,
    /// Callees whose devices should get a cancel push (the call ended before they answered).
    pub cancel_push: Vec<Uid>,
    /// The robot should leave the channel (nobody is left).
    pub robot_leave: bool,
    /// Why the input changed nothing, when it did not (recorded on the timeline).
    pub ignored: Option<&'static str>,
}

impl Transition {
    fn ignore(reason: &'static str) -> Self {
        Self {
            ignored: Some(reason),
            ..Self::default()
        }
    }
}

/// Working copy used while computing a transition.
struct Work {
    state: CallState,
    members: Vec<Member>,
    t: Transition,
}

impl Work {
    fn member_mut(&mut self, uid: &Uid) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| &m.uid == uid)
    }

    /// Ensures `uid` is a member; unknown uids become `Invited`.
    fn ensure_member(&mut self, uid: &Uid) {
        if self.member_mut(uid).is_none() {
            self.members.push(Member {
                uid: uid.clone(),
                role: Role::Invited,
                status: MsgStatus::Created,
                joined: false,
            });
            self.t.add_members.push((uid.clone(), Role::Invited));
        }
    }

    fn set_status(&mut self, uid: &Uid, status: MsgStatus) {
        let mut changed = false;
        if let Some(m) = self.member_mut(uid)
            && status > m.status
        {
            m.status = status;
            changed = true;
        }
        if changed {
            self.t.status_changes.retain(|(u, _)| u != uid);
            self.t.status_changes.push((uid.clone(), status));
        }
    }

    fn mark_joined(&mut self, uid: &Uid) {
        let mut changed = false;
        if let Some(m) = self.member_mut(uid)
            && !m.joined
        {
            m.joined = true;
            changed = true;
        }
        if changed {
            self.t.joined.push(uid.clone());
        }
    }

    fn role_of(&self, uid: &Uid) -> Option<Role> {
        self.members.iter().find(|m| &m.uid == uid).map(|m| m.role)
    }

    /// Anyone still in the channel: joined and not done.
    fn anyone_left(&self) -> bool {
        self.members
            .iter()
            .any(|m| m.joined && m.status < MsgStatus::Ended)
    }

    fn every_callee_done(&self) -> bool {
        let mut callees = self
            .members
            .iter()
            .filter(|m| m.role == Role::Callee)
            .peekable();
        callees.peek().is_some() && callees.all(|m| m.status == MsgStatus::Ended)
    }

    fn end(&mut self, code: i64, robot_leave: bool) {
        let was_ringing = self.state == CallState::Ringing;
        self.state = CallState::Ended;
        self.t.new_state = Some((CallState::Ended, Some(code)));
        let uids: Vec<Uid> = self.members.iter().map(|m| m.uid.clone()).collect();
        for m in &self.members {
            // Callees that never answered get a cancel push.
            if was_ringing && m.role == Role::Callee && m.status < MsgStatus::Ended && !m.joined {
                self.t.cancel_push.push(m.uid.clone());
            }
        }
        for u in uids {
            self.set_status(&u, MsgStatus::Ended);
        }
        self.t.robot_leave = robot_leave;
    }

    fn connect(&mut self) {
        if self.state == CallState::Ringing {
            self.state = CallState::Connected;
            self.t.new_state = Some((CallState::Connected, None));
        }
    }

    /// A person is done (2, 1007, heartbeat expiry): their row goes to 2, and the call
    /// ends with `code` when nobody is left.
    fn person_done(&mut self, uid: &Uid, code: i64) {
        self.set_status(uid, MsgStatus::Ended);
        if !self.anyone_left() {
            self.end(code, true);
        }
    }
}

/// Computes what `input` does to the call in `snap`.
pub fn apply(snap: &CallSnapshot, input: &Input) -> Transition {
    let mut w = Work {
        state: snap.state,
        members: snap.members.clone(),
        t: Transition::default(),
    };
    let ended = snap.state == CallState::Ended;
    match input {
        Input::Seen { uid } => {
            if ended {
                return Transition::ignore("call already ended");
            }
            w.ensure_member(uid);
            w.mark_joined(uid);
            if w.role_of(uid) == Some(Role::Callee) {
                w.set_status(uid, MsgStatus::Fetched);
                // A callee in the channel means the call was answered.
                w.connect();
            }
        }
        Input::Left { uid } => {
            if ended {
                return Transition::ignore("call already ended");
            }
            match w.member_mut(uid) {
                Some(m) if m.joined && m.status < MsgStatus::Ended => {}
                _ => return Transition::ignore("not an active participant"),
            }
            w.person_done(uid, EventCode::Ended.code());
        }
        Input::RingTimeout => {
            if snap.state != CallState::Ringing {
                return Transition::ignore("call is not ringing");
            }
            w.end(EventCode::NoAnswer.code(), true);
        }
        Input::HeartbeatExpired { uid } => {
            if ended {
                return Transition::ignore("call already ended");
            }
            match w.member_mut(uid) {
                Some(m) if m.joined && m.status < MsgStatus::Ended => {}
                _ => return Transition::ignore("not an active participant"),
            }
            w.person_done(uid, EventCode::Failed.code());
        }
        Input::Event { uid, code } => {
            if ended {
                return Transition::ignore("call already ended");
            }
            w.ensure_member(uid);
            let role = w.role_of(uid);
            match code {
                EventCode::Connected => {
                    w.mark_joined(uid);
                    if role == Some(Role::Callee) {
                        w.set_status(uid, MsgStatus::Fetched);
                    }
                    w.connect();
                }
                EventCode::Ended => {
                    w.mark_joined(uid);
                    w.person_done(uid, EventCode::Ended.code());
                }
                EventCode::Failed => w.person_done(uid, EventCode::Failed.code()),
                EventCode::CallerCancelled | EventCode::NoAnswer => {
                    if role != Some(Role::Caller) {
                        return Transition::ignore("only the caller cancels");
                    }
                    if snap.state != CallState::Ringing {
                        return Transition::ignore("call is not ringing");
                    }
                    w.end(code.code(), true);
                }
                EventCode::CallerSawReject => {
                    if role != Some(Role::Caller) {
                        return Transition::ignore("only the caller reports a rejection");
                    }
                    if snap.state != CallState::Ringing {
                        return Transition::ignore("call is not ringing");
                    }
                    let callees = w.members.iter().filter(|m| m.role == Role::Callee).count();
                    // With one callee the caller's report is the rejection; with several,
                    // the call ends once every callee has rejected (1003).
                    if callees <= 1 || w.every_callee_done() {
                        w.end(EventCode::CallerSawReject.code(), false);
                    } else {
                        return Transition::ignore("waiting for every callee to reject");
                    }
                }
                EventCode::CalleeRejected | EventCode::CalleeSawCancel => {
                    if role != Some(Role::Callee) {
                        return Transition::ignore("only a callee reports this");
                    }
                    w.set_status(uid, MsgStatus::Ended);
                    if *code == EventCode::CalleeRejected
                        && snap.state == CallState::Ringing
                        && w.every_callee_done()
                    {
                        w.end(EventCode::CallerSawReject.code(), false);
                    }
                }
            }
        }
    }
    if w.t == Transition::default() {
        w.t.ignored = Some("no change");
    }
    w.t
}

impl Input {
    /// Who reported it: none for the server's ring timeout, which has no person.
    pub fn reporter(&self) -> Option<&Uid> {
        match self {
            Input::Event { uid, .. }
            | Input::Seen { uid }
            | Input::Left { uid }
            | Input::HeartbeatExpired { uid } => Some(uid),
            Input::RingTimeout => None,
        }
    }
}

/// How an input shows on the call's timeline (the rest of the entry, its kind, source
/// and detail, says who reported it and how).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineLine {
    /// The event code: the app's, or the server's 1001 for a ring timeout.
    pub code: Option<i64>,
    /// What it did: `applied`, `call ended (1001)`, `ignored: <why>`, ...
    pub effect: String,
}

/// The timeline entry of `input` having made `t`, or none when it is not recorded: an
/// input that changed nothing is only recorded when `always_record` (app events are).
pub fn timeline_line(input: &Input, t: &Transition, always_record: bool) -> Option<TimelineLine> {
    if !always_record && t.ignored.is_some() {
        return None;
    }
    let code = match input {
        Input::Event { code, .. } => Some(code.code()),
        // a server-generated 1001 (spec: recorded as server-generated)
        Input::RingTimeout => Some(EventCode::NoAnswer.code()),
        _ => None,
    };
    let effect = match t.ignored {
        None => match t.new_state {
            Some((s, Some(c))) => format!("call {} ({c})", s.as_str()),
            Some((s, None)) => format!("call {}", s.as_str()),
            None => "applied".to_owned(),
        },
        Some(why) => format!("ignored: {why}"),
    };
    Some(TimelineLine { code, effect })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> Uid {
        Uid::parse(s).unwrap()
    }

    fn member(u: &str, role: Role, status: MsgStatus, joined: bool) -> Member {
        Member {
            uid: uid(u),
            role,
            status,
            joined,
        }
    }

    /// A ringing call from A to B (and C when `two`).
    fn ringing(two: bool) -> CallSnapshot {
        let mut members = vec![
            member("A", Role::Caller, MsgStatus::Created, true),
            member("B", Role::Callee, MsgStatus::Created, false),
        ];
        if two {
            members.push(member("C", Role::Callee, MsgStatus::Created, false));
        }
        CallSnapshot {
            state: CallState::Ringing,
            members,
        }
    }

    /// Applies a transition to a snapshot, as the store does.
    fn step(snap: &CallSnapshot, input: Input) -> (CallSnapshot, Transition) {
        let t = apply(snap, &input);
        let mut s = snap.clone();
        for (u, r) in &t.add_members {
            s.members.push(Member {
                uid: u.clone(),
                role: *r,
                status: MsgStatus::Created,
                joined: false,
            });
        }
        for (u, st) in &t.status_changes {
            let m = s.members.iter_mut().find(|m| &m.uid == u).unwrap();
            assert!(*st > m.status, "status must only move forward");
            m.status = *st;
        }
        for u in &t.joined {
            s.members.iter_mut().find(|m| &m.uid == u).unwrap().joined = true;
        }
        if let Some((st, _)) = t.new_state {
            s.state = st;
        }
        (s, t)
    }

    fn ev(u: &str, code: EventCode) -> Input {
        Input::Event { uid: uid(u), code }
    }

    fn status(s: &CallSnapshot, u: &str) -> MsgStatus {
        s.members
            .iter()
            .find(|m| m.uid.as_str() == u)
            .unwrap()
            .status
    }

    #[test]
    fn answered_then_both_hang_up() {
        let s = ringing(false);
        let (s, t) = step(&s, ev("B", EventCode::Connected));
        assert_eq!(t.new_state, Some((CallState::Connected, None)));
        assert_eq!(status(&s, "B"), MsgStatus::Fetched);
        let (s, t) = step(&s, ev("A", EventCode::Ended));
        assert_eq!(t.new_state, None, "B is still in the call");
        assert_eq!(status(&s, "A"), MsgStatus::Ended);
        let (s, t) = step(&s, ev("B", EventCode::Ended));
        assert_eq!(t.new_state, Some((CallState::Ended, Some(2))));
        assert!(t.robot_leave);
        assert_eq!(s.state, CallState::Ended);
        // duplicates and late events never reopen
        for code in EventCode::ALL {
            let (s2, t) = step(&s, ev("B", code));
            assert_eq!(s2, s);
            assert!(t.ignored.is_some());
        }
        let (_, t) = step(&s, Input::Seen { uid: uid("B") });
        assert!(t.ignored.is_some());
    }

    #[test]
    fn caller_cancel_ends_ringing_call_and_pushes_cancel() {
        let (s, t) = step(&ringing(true), ev("A", EventCode::CallerCancelled));
        assert_eq!(t.new_state, Some((CallState::Ended, Some(1000))));
        assert_eq!(t.cancel_push, vec![uid("B"), uid("C")]);
        assert!(s.members.iter().all(|m| m.status == MsgStatus::Ended));
    }

    #[test]
    fn no_answer_from_caller_and_ring_timeout_end_as_1001() {
        let (_, t) = step(&ringing(false), ev("A", EventCode::NoAnswer));
        assert_eq!(t.new_state, Some((CallState::Ended, Some(1001))));
        let (s, t) = step(&ringing(false), Input::RingTimeout);
        assert_eq!(t.new_state, Some((CallState::Ended, Some(1001))));
        let (_, t) = step(&s, Input::RingTimeout);
        assert!(t.ignored.is_some(), "a second sweep changes nothing");
    }

    #[test]
    fn cancel_codes_from_callee_or_after_connect_are_ignored() {
        let (_, t) = step(&ringing(false), ev("B", EventCode::CallerCancelled));
        assert!(t.ignored.is_some());
        let (s, _) = step(&ringing(false), ev("B", EventCode::Connected));
        for code in [
            EventCode::CallerCancelled,
            EventCode::NoAnswer,
            EventCode::CallerSawReject,
        ] {
            let (s2, t) = step(&s, ev("A", code));
            assert_eq!(s2.state, CallState::Connected);
            assert!(t.ignored.is_some(), "{code:?}");
        }
        let (_, t) = step(&s, Input::RingTimeout);
        assert!(t.ignored.is_some());
    }

    #[test]
    fn rejection_by_single_callee() {
        let (s, t) = step(&ringing(false), ev("B", EventCode::CalleeRejected));
        assert_eq!(status(&s, "B"), MsgStatus::Ended);
        assert_eq!(t.new_state, Some((CallState::Ended, Some(1002))));
        assert!(!t.robot_leave, "the caller may still invite the robot");
        // the caller's report arrives late: nothing changes
        let (_, t) = step(&s, ev("A", EventCode::CallerSawReject));
        assert!(t.ignored.is_some());
        // or the caller's report arrives first
        let (_, t) = step(&ringing(false), ev("A", EventCode::CallerSawReject));
        assert_eq!(t.new_state, Some((CallState::Ended, Some(1002))));
    }

    #[test]
    fn rejection_needs_every_callee_when_several() {
        let s = ringing(true);
        let (s, t) = step(&s, ev("B", EventCode::CalleeRejected));
        assert_eq!(t.new_state, None);
        let (s, t) = step(&s, ev("A", EventCode::CallerSawReject));
        assert!(t.ignored.is_some());
        assert_eq!(s.state, CallState::Ringing);
        let (s, t) = step(&s, ev("C", EventCode::CalleeRejected));
        assert_eq!(t.new_state, Some((CallState::Ended, Some(1002))));
        assert_eq!(s.state, CallState::Ended);
    }

    #[test]
    fn one_callee_rejects_other_answers() {
        let s = ringing(true);
        let (s, _) = step(&s, ev("B", EventCode::CalleeRejected));
        let (s, t) = step(&s, ev("C", EventCode::Connected));
        assert_eq!(t.new_state, Some((CallState::Connected, None)));
        assert_eq!(status(&s, "B"), MsgStatus::Ended);
        assert_eq!(status(&s, "C"), MsgStatus::Fetched);
    }

    #[test]
    fn callee_saw_cancel_only_moves_its_row() {
        let (s, t) = step(&ringing(true), ev("B", EventCode::CalleeSawCancel));
        assert_eq!(status(&s, "B"), MsgStatus::Ended);
        assert_eq!(t.new_state, None);
        // late, after the caller's cancel ended the call
        let (s, _) = step(&ringing(true), ev("A", EventCode::CallerCancelled));
        let (_, t) = step(&s, ev("B", EventCode::CalleeSawCancel));
        assert!(t.ignored.is_some());
    }

    #[test]
    fn failure_ends_when_nobody_is_left() {
        let (s, _) = step(&ringing(false), ev("B", EventCode::Connected));
        let (s, t) = step(&s, ev("B", EventCode::Failed));
        assert_eq!(t.new_state, None);
        assert_eq!(status(&s, "B"), MsgStatus::Ended);
        let (s, t) = step(&s, ev("A", EventCode::Failed));
        assert_eq!(t.new_state, Some((CallState::Ended, Some(1007))));
        assert!(t.robot_leave);
        assert_eq!(s.state, CallState::Ended);
    }

    #[test]
    fn caller_alone_hanging_up_while_ringing_ends_call() {
        let (s, t) = step(&ringing(false), ev("A", EventCode::Ended));
        assert_eq!(t.new_state, Some((CallState::Ended, Some(2))));
        assert_eq!(t.cancel_push, vec![uid("B")]);
        assert_eq!(s.state, CallState::Ended);
    }

    #[test]
    fn heartbeat_expiry_drops_participant_and_ends_with_last() {
        let (s, _) = step(&ringing(false), Input::Seen { uid: uid("B") });
        assert_eq!(
            s.state,
            CallState::Connected,
            "a callee in the channel answered"
        );
        let (s, t) = step(&s, Input::HeartbeatExpired { uid: uid("A") });
        assert_eq!(t.new_state, None);
        assert_eq!(status(&s, "A"), MsgStatus::Ended);
        let (_, t) = step(&s, Input::HeartbeatExpired { uid: uid("A") });
        assert!(t.ignored.is_some(), "already dropped");
        let (s, t) = step(&s, Input::HeartbeatExpired { uid: uid("B") });
        assert_eq!(t.new_state, Some((CallState::Ended, Some(1007))));
        assert!(t.robot_leave);
        assert_eq!(s.state, CallState::Ended);
    }

    #[test]
    fn leaving_the_channel_is_hanging_up() {
        let (s, _) = step(&ringing(false), Input::Seen { uid: uid("B") });
        let (s, t) = step(&s, Input::Left { uid: uid("B") });
        assert_eq!(t.new_state, None);
        assert_eq!(status(&s, "B"), MsgStatus::Ended);
        let (_, t) = step(&s, Input::Left { uid: uid("B") });
        assert!(t.ignored.is_some(), "twice changes nothing");
        let (s, t) = step(&s, Input::Left { uid: uid("A") });
        assert_eq!(t.new_state, Some((CallState::Ended, Some(2))));
        assert!(t.robot_leave);
        let (_, t) = step(&s, Input::Left { uid: uid("Z") });
        assert!(t.ignored.is_some());
    }

    #[test]
    fn unknown_uid_becomes_invited_member() {
        let (s, t) = step(&ringing(false), Input::Seen { uid: uid("Z") });
        assert_eq!(t.add_members, vec![(uid("Z"), Role::Invited)]);
        assert!(s.members.iter().any(|m| m.uid.as_str() == "Z" && m.joined));
        assert_eq!(
            s.state,
            CallState::Ringing,
            "an invited person does not answer the call"
        );
        let (_, t) = step(&s, ev("Z", EventCode::CalleeRejected));
        assert!(t.ignored.is_some());
    }

    /// Every code, in every state, from every role: statuses only move forward and an
    /// ended call stays ended.
    #[test]
    fn every_code_in_every_state_is_monotonic() {
        let states = {
            let r = ringing(true);
            let (c, _) = step(&r, ev("B", EventCode::Connected));
            let (e, _) = step(&r, ev("A", EventCode::CallerCancelled));
            vec![r, c, e]
        };
        for s in &states {
            for who in ["A", "B", "C", "Z"] {
                for code in EventCode::ALL {
                    let (s2, _) = step(s, ev(who, code));
                    if s.state == CallState::Ended {
                        assert_eq!(&s2, s);
                    }
                    // applying the same event again changes nothing more
                    let (s3, t) = step(&s2, ev(who, code));
                    assert_eq!(s3.state, s2.state);
                    assert!(t.status_changes.is_empty(), "{who} {code:?} twice");
                }
            }
        }
    }

    #[test]
    fn timeline_line_says_what_the_input_did() {
        let event = |code| Input::Event {
            uid: uid("A"),
            code,
        };
        let snap = ringing(false);
        // a ring timeout is the server's 1001 and ends the call
        let t = apply(&snap, &Input::RingTimeout);
        assert_eq!(
            timeline_line(&Input::RingTimeout, &t, false),
            Some(TimelineLine {
                code: Some(1001),
                effect: "call ended (1001)".into()
            })
        );
        // an app event keeps its code; a change without an end code has none
        let connected = Transition {
            new_state: Some((CallState::Connected, None)),
            ..Transition::default()
        };
        let line = timeline_line(&event(EventCode::Connected), &connected, true).unwrap();
        assert_eq!(
            (line.code, line.effect.as_str()),
            (Some(1), "call connected")
        );
        // applied without a state change
        let seen = Input::Seen { uid: uid("B") };
        let line = timeline_line(&seen, &Transition::default(), false).unwrap();
        assert_eq!((line.code, line.effect.as_str()), (None, "applied"));
    }

    #[test]
    fn an_ignored_input_is_recorded_only_when_asked() {
        let t = Transition::ignore("the call has ended");
        let seen = Input::Seen { uid: uid("B") };
        assert_eq!(timeline_line(&seen, &t, false), None);
        let line = timeline_line(&seen, &t, true).unwrap();
        assert_eq!(line.effect, "ignored: the call has ended");
        assert_eq!(Input::RingTimeout.reporter(), None);
        assert_eq!(seen.reporter(), Some(&uid("B")));
    }

    #[test]
    fn stored_forms_round_trip_and_unknown_ones_are_refused() {
        for s in [CallState::Ringing, CallState::Connected, CallState::Ended] {
            assert_eq!(CallState::parse(s.as_str()), Some(s));
        }
        for r in [Role::Caller, Role::Callee, Role::Invited] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(CallState::parse("paused"), None);
        assert_eq!(Role::parse("host"), None);
    }
}
