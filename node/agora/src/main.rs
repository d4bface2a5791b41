//! The `agora` binary: the command line (one module per subcommand, clap derive), the tracing
//! subscriber, and the tokio runtime. `agora node run` starts a node through `agora-daemon`;
//! every other command talks to a running node through the control API client; `agora devnet …`
//! is `agora_devnet::process`.
//!
//! The top of the stack: may depend on every crate; nothing depends on it (tests run the built
//! binary).
#![forbid(unsafe_code)]

mod cli;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, dispatch};

fn init_tracing(cli: &Cli) {
    let default = match cli.command {
        Command::Node(_) => "info",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("AGORA_LOG_JSON").is_ok_and(|v| v == "1") {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli);
    match dispatch(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
