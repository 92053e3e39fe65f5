//! The agent process.
pub fn run(_args: crate::cli::AgentArgs) -> anyhow::Result<()> {
    anyhow::bail!("sluice agent: not implemented yet")
}
