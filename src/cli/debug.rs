use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum DebugCommand {
    /// Placeholder.
    Nop,
}

pub fn run(_c: DebugCommand) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
