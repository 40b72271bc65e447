//! The `confab` command: parse the command line, load configuration, start tracing, call the
//! library.

use std::time::Duration;

use clap::{Parser, Subcommand};

use confab::app::{Application, jwt_secret};
use confab::auth::Keys;
use confab::config::{Config, parse_duration};

/// Confab: a chat backend. Configuration comes from CONFAB_* environment variables (see the
/// README); `confab` alone serves.
#[derive(Parser)]
#[command(name = "confab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Start even when the database's settings can lose acknowledged writes (PostgreSQL
    /// fsync, synchronous_commit or full_page_writes off; SQLite below synchronous=FULL).
    /// Same as CONFAB_ALLOW_UNSAFE_DURABILITY=true.
    #[arg(long, global = true)]
    allow_unsafe_durability: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then serve REST (and, later, realtime) on CONFAB_ADDR.
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Import an NDJSON file (users, conversations, messages) into the configured database, or
    /// into a running server with --url and --token. Shows progress; prints the summary.
    Import {
        /// The NDJSON file (one record a line).
        file: std::path::PathBuf,
        /// A running server to send it to, like http://127.0.0.1:8080.
        #[arg(long, requires = "token")]
        url: Option<String>,
        /// A server token for --url.
        #[arg(long, requires = "url")]
        token: Option<String>,
    },
    /// Print a token signed with the configured (or database-kept) secret.
    Token {
        /// The user the token acts as.
        #[arg(required_unless_present = "server", conflicts_with = "server")]
        user_id: Option<String>,
        /// A server token (for the app's backend) instead of a user token.
        #[arg(long)]
        server: bool,
        /// Lifetime, like 30m, 24h or 7d.
        #[arg(long, default_value = "24h", value_parser = ttl)]
        ttl: Duration,
    },
}

fn ttl(s: &str) -> Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration like 30m, 24h or 7d"))
}

/// mimalloc rather than glibc's malloc: cheaper cross-thread frees (Cargo.toml says where they
/// cost most).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    confab::telemetry::init_tracing();
    let config = match Config::from_env() {
        Ok(mut c) => {
            c.allow_unsafe_durability |= cli.allow_unsafe_durability;
            c
        }
        Err(e) => {
            eprintln!("confab: bad configuration: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(cli, config).await {
        eprintln!("confab: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let started = std::time::Instant::now();
            let app = Application::build(config).await?;
            tracing::info!(
                port = app.port(),
                ready_ms = started.elapsed().as_millis() as u64,
                "confab listening"
            );
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Migrate => {
            confab::storage::open(&config).await?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Import { file, url, token } => {
            let summary = match (url, token) {
                (Some(url), Some(token)) => {
                    confab::import::cli::to_server(&file, &url, &token).await?
                }
                _ => {
                    let store = confab::storage::open(&config).await?;
                    confab::import::cli::to_database(&file, &store, config.import_batch).await?
                }
            };
            println!("{summary}");
            Ok(())
        }
        Command::Token {
            user_id,
            server,
            ttl,
        } => {
            let store = confab::storage::open(&config).await?;
            let (secret, _) = jwt_secret(&config, &store).await?;
            let keys = Keys::new(&secret);
            let token = match user_id {
                Some(u) if !server => {
                    confab::domain::check_user_id("user_id", &u)
                        .map_err(|e| anyhow::anyhow!("user_id {}", e.message))?;
                    keys.user_token(&u, ttl)
                }
                _ => keys.server_token(ttl),
            };
            println!("{token}");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
