//! The `floodgate` binary: parse the command line, set up logging, run.

use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::Notify;

use clap::Parser;
use floodgate::config::Config;
use floodgate::settings::{Cli, Command, LogFormat};

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { path } => match Config::load(&path) {
            Ok(config) => {
                println!(
                    "{}: OK ({} domains: {})",
                    path.display(),
                    config.domain_names().len(),
                    config.domain_names().join(", ")
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Serve(settings) => {
            init_logging(settings.log_format);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let reload = Arc::new(Notify::new());
                tokio::spawn(reload_on_sighup(reload.clone()));
                floodgate::server::serve(&settings, shutdown_signal(), reload).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Asks for a config reload on every SIGHUP.
async fn reload_on_sighup(reload: Arc<Notify>) {
    #[cfg(unix)]
    if let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config");
            reload.notify_one();
        }
    }
    #[cfg(not(unix))]
    let _ = reload;
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
