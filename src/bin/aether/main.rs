//! `aether`: inspect an aether deployment on NATS JetStream — an actor's events, a namespace's
//! actors and live commits, a commit's status, snapshots, the cluster — and `verify` a
//! namespace. Built with the `cli` feature: `cargo run --features cli --bin aether -- --help`.
//!
//! Everything here is read-only: nothing is appended, and no stream or bucket is created (a
//! namespace whose events stream does not exist is reported as missing). Decoding and damage
//! detection are the library's own (`EventStore::events_with_errors`, `store::check_record`,
//! `cluster::inspect`).
//!
//! Exit codes: 0 ok, 1 damage found, 2 usage, connection or broker errors.

mod cluster;
mod connect;
mod output;
mod store;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use connect::ConnectionArgs;
use output::{CliError, Verdict};

/// Inspect an aether deployment on NATS JetStream, and verify a namespace.
///
/// Exit codes: 0 ok, 1 damage found, 2 usage, connection or broker errors.
#[derive(Parser, Debug)]
#[command(name = "aether", version)]
struct Cli {
    #[command(flatten)]
    connection: ConnectionArgs,
    /// Print JSON (one document; `tail` prints one JSON object per line).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print an actor's events, and every damaged record met on the way (exit 1 if any).
    Events {
        /// The namespace.
        namespace: String,
        /// The actor id.
        actor: String,
        /// The first version to print.
        #[arg(long, default_value_t = 1, value_name = "VERSION")]
        from: u64,
    },
    /// Follow a namespace's new commits live, in commit order, until Ctrl-C.
    Tail {
        /// The namespace.
        namespace: String,
        /// Start at this position (stream sequence) instead of the current end.
        #[arg(long, value_name = "POSITION")]
        from: Option<u64>,
        /// Stop after this many commits.
        #[arg(long, value_name = "N")]
        max: Option<u64>,
        /// How long to wait between reads when nothing new arrived, in milliseconds.
        #[arg(long, default_value_t = 250, value_name = "MS", hide = true)]
        poll_ms: u64,
    },
    /// List a namespace's actors with the number of records each holds.
    Actors {
        /// The namespace.
        namespace: String,
    },
    /// Whether a commit is stored, and where (exit 1 if only a damaged copy is).
    Commit {
        /// The namespace.
        namespace: String,
        /// The actor id.
        actor: String,
        /// The commit id (as `AppendOutcome::commit_id` or `AppendError::Indeterminate` names it).
        commit_id: String,
    },
    /// Print an actor's latest snapshot (exit 1 if it cannot be decoded).
    Snapshot {
        /// The namespace.
        namespace: String,
        /// The actor id.
        actor: String,
    },
    /// Show the cluster: members, leader and fencing token, assignment epoch, shards per node.
    Cluster {
        /// The cluster's name (the prefix of its KV buckets).
        #[arg(long, default_value = aether::cluster::CLUSTER_NAME_DEFAULT)]
        name: String,
    },
    /// Check every actor of a namespace: report version gaps, duplicate commits, undecodable or
    /// misplaced records, damaged snapshots, and expired prefixes (exit 1 on damage).
    Verify {
        /// The namespace.
        namespace: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return fail(&CliError::Setup(format!(
                "cannot start the async runtime: {e}"
            )));
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(Verdict::Clean) => ExitCode::SUCCESS,
        Ok(Verdict::Damaged) => ExitCode::from(1),
        Err(e) => fail(&e),
    }
}

fn fail(error: &CliError) -> ExitCode {
    eprintln!("aether: error: {error}");
    ExitCode::from(2)
}

impl Command {
    /// The namespace the command reads, if it reads one.
    fn namespace(&self) -> Option<&str> {
        match self {
            Command::Events { namespace, .. }
            | Command::Tail { namespace, .. }
            | Command::Actors { namespace }
            | Command::Commit { namespace, .. }
            | Command::Snapshot { namespace, .. }
            | Command::Verify { namespace } => Some(namespace),
            Command::Cluster { .. } => None,
        }
    }
}

async fn run(cli: Cli) -> Result<Verdict, CliError> {
    // Bad input is refused before anything is asked of the server.
    if let Some(namespace) = cli.command.namespace() {
        aether::codec::validate_namespace(namespace)?;
    }
    let options = cli.connection.options()?;
    let broker = aether::NatsBroker::connect(options).await?;
    let json = cli.json;
    match cli.command {
        Command::Events {
            namespace,
            actor,
            from,
        } => store::events(&broker, &namespace, &actor, from, json).await,
        Command::Tail {
            namespace,
            from,
            max,
            poll_ms,
        } => {
            let follow = store::Follow {
                from,
                max,
                poll: std::time::Duration::from_millis(poll_ms.max(1)),
            };
            store::tail(&broker, &namespace, follow, json).await
        }
        Command::Actors { namespace } => store::actors(&broker, &namespace, json).await,
        Command::Commit {
            namespace,
            actor,
            commit_id,
        } => store::commit(&broker, &namespace, &actor, &commit_id, json).await,
        Command::Snapshot { namespace, actor } => {
            store::snapshot(&broker, &namespace, &actor, json).await
        }
        Command::Cluster { name } => cluster::show(&broker, &name, json).await,
        Command::Verify { namespace } => verify::run(&broker, &namespace, json).await,
    }
}
