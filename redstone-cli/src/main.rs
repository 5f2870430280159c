//! `redstone`: the command line of a Redstone cache.
//!
//! ```text
//! redstone put KEY FILE.npy          redstone get KEY -o FILE.npy
//! redstone del KEY                   redstone stats [--watch SECS]
//! redstone load CKPT.safetensors [--prefix P] [--skip-existing]
//! redstone dump P -o OUT.safetensors
//! ```
//!
//! Every subcommand takes `--addr HOST:PORT` (the fast path by default,
//! `--grpc` for the gRPC API) or `--nodes LIST|FILE` for a cluster. Exit
//! codes: 0 ok, 1 not found, refused by the server, or the output not
//! written, 2 usage (bad arguments or input file), 3 server unreachable;
//! the reason is one line on stderr.

mod checkpoint;
mod error;
mod npy;
mod stats;
mod target;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use redstone::client::TensorStore;

use error::CliError;
use target::TargetArgs;

/// The command line of a Redstone tensor cache.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Exit codes: 0 ok, 1 not found, refused or not written, 2 usage, 3 server unreachable."
)]
struct Cli {
    #[command(flatten)]
    target: TargetArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Store a .npy file's array under KEY.
    Put {
        /// The key.
        key: String,
        /// A .npy file (little-endian; C or Fortran order).
        file: PathBuf,
    },
    /// Write the tensor under KEY to a .npy file.
    Get {
        /// The key.
        key: String,
        /// Where to write it.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Remove KEY (exit 1 if it was not cached).
    Del {
        /// The key.
        key: String,
    },
    /// The cache's counters: entries, memory, hit rate (per node with
    /// --nodes).
    Stats {
        /// Refresh every SECS seconds until interrupted.
        #[arg(long, value_name = "SECS")]
        watch: Option<f64>,
    },
    /// Put every tensor of a safetensors checkpoint under PREFIX + its
    /// name, then a manifest under PREFIX for `dump`.
    Load {
        /// The checkpoint (mapped, not read whole into memory).
        file: PathBuf,
        /// Key prefix. Default: the file's name without its extension,
        /// then `/` (`model.safetensors` → `model/`).
        #[arg(long)]
        prefix: Option<String>,
        /// Tensors already cached are skipped instead of failing the load.
        #[arg(long)]
        skip_existing: bool,
        /// Puts in flight at once.
        #[arg(long, default_value_t = 8, value_name = "N")]
        concurrency: usize,
        /// Connections to the server the puts are spread over (one
        /// server; a cluster client has one per node).
        #[arg(long, default_value_t = 4, value_name = "N")]
        connections: usize,
    },
    /// Write the checkpoint loaded under PREFIX back to a safetensors file
    /// (byte-identical to the file loaded).
    Dump {
        /// The prefix it was loaded under.
        prefix: String,
        /// Where to write it.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprintln!("redstone: {} (see redstone --help)", one_line(&e));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("redstone: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(message) => {
            if !message.is_empty() {
                println!("{}", message.trim_end());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("redstone: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs one command. Inputs are checked before connecting, so that a bad
/// file is a usage error (2) whether or not a server answers.
async fn run(cli: Cli) -> Result<String, CliError> {
    let target = cli.target;
    match cli.command {
        Command::Put { key, file } => {
            let tensor = npy::read(&file)?;
            let (dtype, shape) = (tensor.meta().dtype(), tensor.meta().shape().to_vec());
            target.connect().await?.put_tensor(&key, tensor).await?;
            Ok(format!("put {key}: {dtype:?} {shape:?}"))
        }
        Command::Get { key, output } => {
            let tensor = target.connect().await?.fetch(&key).await?;
            npy::write(&output, &tensor)?;
            let meta = tensor.meta();
            Ok(format!(
                "wrote {key} ({:?} {:?}) to {}",
                meta.dtype(),
                meta.shape(),
                output.display()
            ))
        }
        Command::Del { key } => match target.connect().await?.delete(&key).await? {
            true => Ok(format!("deleted {key}")),
            false => Err(CliError::NotFound(key)),
        },
        Command::Stats { watch: None } => {
            stats::render(&target.connect().await?, &server_name(&target)).await
        }
        Command::Stats { watch: Some(secs) } => {
            let every = Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    CliError::Usage("--watch takes a positive number of seconds".into())
                })?;
            let store = target.connect().await?;
            let name = server_name(&target);
            // One handler for the whole loop: a Ctrl-C while a table is
            // being fetched is not lost.
            let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
            loop {
                let table = tokio::select! {
                    _ = &mut interrupted => return Ok(String::new()),
                    table = stats::render(&store, &name) => table?,
                };
                // Clear the screen, then draw the table at the top.
                print!("\x1b[2J\x1b[H{table}");
                tokio::select! {
                    _ = &mut interrupted => return Ok(String::new()),
                    () = tokio::time::sleep(every) => {}
                }
            }
        }
        Command::Load {
            file,
            prefix,
            skip_existing,
            concurrency,
            connections,
        } => {
            let prefix = match prefix {
                Some(p) if p.is_empty() => {
                    return Err(CliError::Usage(
                        "--prefix must not be empty: the manifest is stored under it".into(),
                    ))
                }
                Some(p) => p,
                None => default_prefix(&file)?,
            };
            let checkpoint = checkpoint::Checkpoint::open(&file)?;
            let options = checkpoint::Load {
                prefix,
                skip_existing,
                concurrency,
            };
            let stores = target.connect_many(connections.clamp(1, 64)).await?;
            checkpoint::load(&stores, checkpoint, options).await
        }
        Command::Dump { prefix, output } => {
            checkpoint::dump(&target.connect().await?, &prefix, &output).await
        }
    }
}

/// clap's error without its usage block, on one line.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let words: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .flat_map(str::split_whitespace)
        .collect();
    words.join(" ").trim_start_matches("error: ").to_owned()
}

/// Where an output file is written before it is renamed into place:
/// beside it, named for this process.
fn partial_path(out: &std::path::Path) -> PathBuf {
    let mut partial = out.as_os_str().to_owned();
    partial.push(format!(".{}.partial", std::process::id()));
    PathBuf::from(partial)
}

/// `model.safetensors` → `model/`.
fn default_prefix(file: &std::path::Path) -> Result<String, CliError> {
    file.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .map(|s| format!("{s}/"))
        .ok_or_else(|| CliError::Usage(format!("{}: give a --prefix", file.display())))
}

/// The row name of a single server in `stats`.
fn server_name(target: &TargetArgs) -> String {
    let default = if target.grpc {
        "127.0.0.1:50051"
    } else {
        "127.0.0.1:50052"
    };
    target.addr.clone().unwrap_or_else(|| default.to_owned())
}
