//! Where a robot session goes: the connected, non-draining agent with the most free
//! capacity. Sans-IO: a pure function over a snapshot of the agents.

/// One agent as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// Agent id.
    pub id: &'a str,
    /// Sessions it can hold.
    pub capacity: u32,
    /// Sessions it holds or has been offered.
    pub load: u32,
    /// Draining agents take nothing new.
    pub draining: bool,
}

impl Candidate<'_> {
    fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.load)
    }
}

/// The index of the agent to offer the next session to, or `None` when every agent is
/// full or draining. Most free slots first; ties go to the lower load ratio, then the
/// smaller id, so the choice is deterministic.
pub fn pick(candidates: &[Candidate<'_>]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.draining && c.free() > 0)
        .max_by(|(_, a), (_, b)| {
            a.free()
                .cmp(&b.free())
                // lower load/capacity ratio wins: compare b.load*a.cap with a.load*b.cap
                .then_with(|| {
                    (u64::from(b.load) * u64::from(a.capacity))
                        .cmp(&(u64::from(a.load) * u64::from(b.capacity)))
                })
                .then_with(|| b.id.cmp(a.id))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, capacity: u32, load: u32, draining: bool) -> Candidate<'_> {
        Candidate {
            id,
            capacity,
            load,
            draining,
        }
    }

    #[test]
    fn most_free_capacity_wins() {
        let a = [
            c("a", 4, 3, false),
            c("b", 10, 2, false),
            c("c", 2, 0, false),
        ];
        assert_eq!(pick(&a), Some(1));
    }

    #[test]
    fn full_and_draining_agents_are_skipped() {
        assert_eq!(pick(&[c("a", 1, 1, false), c("b", 5, 0, true)]), None);
        assert_eq!(
            pick(&[c("a", 1, 1, false), c("b", 5, 0, true), c("c", 1, 0, false)]),
            Some(2)
        );
        assert_eq!(pick(&[]), None);
        assert_eq!(pick(&[c("z", 0, 0, false)]), None);
    }

    #[test]
    fn ties_are_deterministic() {
        // equal free slots: the lower load ratio wins, then the smaller id
        assert_eq!(pick(&[c("a", 4, 2, false), c("b", 2, 0, false)]), Some(1));
        assert_eq!(pick(&[c("b", 1, 0, false), c("a", 1, 0, false)]), Some(1));
    }

    #[test]
    fn spreads_sessions_over_equal_agents() {
        let mut load = [0u32, 0];
        for _ in 0..4 {
            let cands = [c("a", 2, load[0], false), c("b", 2, load[1], false)];
            let i = pick(&cands).unwrap();
            load[i] += 1;
        }
        assert_eq!(load, [2, 2]);
        assert_eq!(pick(&[c("a", 2, 2, false), c("b", 2, 2, false)]), None);
    }
}
