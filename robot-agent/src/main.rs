//! `robot-agent`: not yet implemented (issue 5).

fn main() -> anyhow::Result<()> {
    anyhow::bail!("robot-agent is not implemented yet: see issue 5 in the tracker")
}
