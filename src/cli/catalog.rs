use std::process::ExitCode;

#[derive(clap::Subcommand, Debug)]
pub enum CatalogCommand {
    /// Check the catalog's integrity against itself.
    Check,
}

pub fn run(_c: CatalogCommand) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
