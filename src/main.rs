//! `mailroute`: routes outbox mail across a cluster of sending servers to the owner of its IP.

mod commands;

/// glibc's malloc spent more time than the routing itself: tokio's task cells are 128-byte
/// aligned (`memalign`), and the heap kept being trimmed and faulted back in. The engine-only
/// benchmark went from ~190k to ~300k msgs/s with mimalloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mailroute",
    version,
    about = "Routes outbox mail to the cluster instance that owns its sending IP"
)]
struct Cli {
    /// Log lines as text (for people) or JSON, one object a line (for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = commands::LogFormat::Text)]
    log_format: commands::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run this instance: consume the outbox, route, hand over, announce.
    Serve {
        /// The instance's config file (MailerQ's `key: value` format).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Three instances in one process on the in-memory broker, with live handover. No setup.
    Demo(commands::demo::DemoArgs),
    /// Cluster operations.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Publish test messages (MailerQ JSON) into an outbox.
    Inject(commands::inject::InjectArgs),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// List the instances that announce themselves within `cluster-timeout`.
    List {
        /// A config file naming the cluster broker, exchange and secret (any instance's).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Make every instance re-read its own config file and re-validate its peers.
    Reload {
        /// A config file naming the cluster broker, exchange and secret (any instance's).
        #[arg(long, short)]
        config: PathBuf,
        /// Only the instance of this `cluster-name` reloads.
        #[arg(long, value_name = "NAME")]
        only: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info",
    };
    commands::init_tracing(default_level, cli.log_format);
    let system = actix_rt::System::new();
    let result = system.block_on(async move {
        match cli.command {
            Command::Serve { config } => commands::serve::run(&config).await,
            Command::Demo(args) => commands::demo::run(args).await,
            Command::Cluster {
                command: ClusterCommand::List { config },
            } => commands::cluster::list(&config).await,
            Command::Cluster {
                command: ClusterCommand::Reload { config, only },
            } => commands::cluster::reload(&config, only).await,
            Command::Inject(args) => commands::inject::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mailroute: {error:#}");
            ExitCode::FAILURE
        }
    }
}
