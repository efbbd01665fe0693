//! One module per subcommand. Each exposes `XxxArgs` (clap) and `run(args)`.

pub type CliResult = Result<std::process::ExitCode, Box<dyn std::error::Error>>;

pub mod backend;
pub mod bgp;
pub mod capture;
pub mod client;
pub mod ct;
pub mod detach;
pub mod explain;
pub mod external;
pub mod identity;
pub mod ipcache;
pub mod mesh;
pub mod observe;
pub mod policy;
pub mod replay;
pub mod run;
pub mod service;
pub mod state;
pub mod status;
pub mod whatif;
