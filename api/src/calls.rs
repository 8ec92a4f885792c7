//! The calls service: an input applied to a call, then what follows from it, in one place.
//!
//! ```text
//!  /dapi/call/event, /dapi/call/heartbeat ─┐
//!  sweeper (ring timeout, heartbeat expiry) ├─> apply ─> Store::apply_input (state machine,
//!  /rtc presence (joined, left, dropped)  ─┘              timeline, outbox, robot leave)
//!                                                       └> Effects::fire:
//!                                                            robot asked to leave -> wake the
//!                                                              dispatcher here + NOTIFY the others
//!                                                            cancel pushes queued -> wake the
//!                                                              push worker
//! ```
//!
//! Every caller goes through [`apply`] (or, for a batch, [`apply_deferred`] then one
//! [`Effects::fire`]), so none of them can forget a consequence: before this module the
//! `/rtc` presence worker dropped the transition, and a deliberate `/rtc` leave that ended
//! a call with a robot in it reached the agent only on the dispatcher's backstop poll, and
//! never another instance's agent.

use crate::AppState;
use crate::call_state::{Input, Transition};
use crate::domain::ChannelName;
use crate::store::{InputMeta, StoreResult};

/// What must happen once transitions are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use = "effects do nothing until fired"]
pub struct Effects {
    /// A robot was asked to leave (or its queued session cancelled): wake this
    /// instance's dispatcher, which sends `leave` to the agent, and NOTIFY the other
    /// instances (PostgreSQL) in case the agent is connected to one of them.
    pub robot: bool,
    /// Cancel pushes were queued in the outbox: wake the push worker.
    pub push: bool,
}

impl Effects {
    /// The consequences of one transition.
    pub fn of(t: &Transition) -> Self {
        Self {
            robot: t.robot_leave,
            push: !t.cancel_push.is_empty(),
        }
    }

    /// Adds the consequences of another change (a batch fires them once).
    pub fn add(&mut self, other: Self) {
        self.robot |= other.robot;
        self.push |= other.push;
    }

    /// Carries them out.
    pub async fn fire(self, state: &AppState) {
        if self.robot {
            state.robot_changed().await;
        }
        if self.push {
            state.push().wake();
        }
    }
}

/// Applies `input` to the call of `channel` (state machine, timeline, outbox, robot leave,
/// in one transaction), then carries out what follows from it.
pub async fn apply(
    state: &AppState,
    channel: &ChannelName,
    input: &Input,
    meta: &InputMeta,
) -> StoreResult<Transition> {
    let (t, effects) = apply_deferred(state, channel, input, meta).await?;
    effects.fire(state).await;
    Ok(t)
}

/// As [`apply`], but the consequences are returned, for a caller that applies a batch
/// and fires them once at the end (the sweeper).
pub async fn apply_deferred(
    state: &AppState,
    channel: &ChannelName,
    input: &Input,
    meta: &InputMeta,
) -> StoreResult<(Transition, Effects)> {
    let t = state.store().apply_input(channel, input, meta).await?;
    let effects = Effects::of(&t);
    Ok((t, effects))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Uid;

    #[test]
    fn a_transition_says_what_follows() {
        assert_eq!(Effects::of(&Transition::default()), Effects::default());
        let t = Transition {
            robot_leave: true,
            cancel_push: vec![Uid::parse("b").unwrap()],
            ..Transition::default()
        };
        assert_eq!(
            Effects::of(&t),
            Effects {
                robot: true,
                push: true
            }
        );
        let mut all = Effects::default();
        all.add(Effects {
            robot: false,
            push: true,
        });
        all.add(Effects {
            robot: true,
            push: false,
        });
        assert_eq!(
            all,
            Effects {
                robot: true,
                push: true
            }
        );
    }
}
