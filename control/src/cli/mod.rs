//! One module per subcommand. Each exposes `XxxArgs` (clap) and `run(args)`.

pub type CliResult = Result<std::process::ExitCode, Box<dyn std::error::Error>>;

pub mod bgp;
pub mod replay;
pub mod state;
