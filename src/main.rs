//! The `floodgate` binary: parse the command line, set up logging, run.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::sync::Notify;

use clap::Parser;
use floodgate::config::{Config, LoadOptions};
use floodgate::settings::reference::{self, Translation};
use floodgate::settings::{Cli, Command, DEFAULT_LOG_FILTER, LogFormat, ServeSettings};

/// The allocator: mimalloc. With glibc's malloc a Redis-store decision cost about a fifth more
/// CPU, most of it in malloc and free of memory that one worker thread allocates and another
/// frees (the request, the pipeline dispatcher and the connection task run on different
/// threads); see docs/benchmarks.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<ExitCode> {
    let (cli, reference) = match reference_command_line()? {
        Some((cli, translation)) => (cli, Some(translation)),
        None => (Cli::parse(), None),
    };
    match cli.command {
        Command::CheckConfig {
            path,
            merge_domain_config,
            config_all_files,
            config_hidden_files,
        } => Ok(check_config(
            &path,
            &LoadOptions {
                merge_domains: merge_domain_config,
                all_files: config_all_files,
                hidden_files: config_hidden_files,
            },
        )),
        Command::Serve(settings) => serve(&settings, reference.as_ref()),
    }
}

/// `floodgate check-config`: loads the config as `serve` would and says what it found or why
/// it is refused.
fn check_config(path: &Path, options: &LoadOptions) -> ExitCode {
    match Config::load_with(path, options) {
        Ok(config) => {
            println!(
                "{}: OK ({} domains: {})",
                path.display(),
                config.domain_names().len(),
                config.domain_names().join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `floodgate serve` until SIGTERM or SIGINT; `reference` is set when the settings were read
/// from envoyproxy/ratelimit's environment.
fn serve(settings: &ServeSettings, reference: Option<&Translation>) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    // The span exporter starts its connection on the runtime.
    let telemetry = {
        let _runtime = runtime.enter();
        let default_filter = reference.map_or(DEFAULT_LOG_FILTER, |t| t.log_filter.as_str());
        init_logging(
            settings.log_format,
            settings.otlp_endpoint.as_deref(),
            default_filter,
        )?
    };
    if let Some(translation) = reference {
        tracing::warn!("started as envoyproxy/ratelimit: settings read from its environment");
        for notice in &translation.notices {
            tracing::warn!("{notice}");
        }
    }
    runtime.block_on(async {
        let reload = Arc::new(Notify::new());
        tokio::spawn(reload_on_sighup(reload.clone()));
        floodgate::service::serve(settings, shutdown_signal(), reload).await
    })?;
    drop(telemetry);
    Ok(ExitCode::SUCCESS)
}

/// The command line of Floodgate started as envoyproxy/ratelimit: as `/bin/ratelimit` with no
/// arguments, or as plain `floodgate serve` (no other argument, no FLOODGATE_CONFIG) with the
/// reference's RUNTIME_ROOT set; made from the reference's environment. `None` otherwise.
fn reference_command_line() -> anyhow::Result<Option<(Cli, Translation)>> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let program = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str());
    let as_ratelimit = program == Some("ratelimit") && args.len() == 1;
    let bare_serve = args.len() == 2
        && args[1] == "serve"
        && std::env::var_os("FLOODGATE_CONFIG").is_none()
        && std::env::var_os("RUNTIME_ROOT").is_some();
    if !(as_ratelimit || bare_serve) {
        return Ok(None);
    }
    let translation = reference::translate(|name| std::env::var(name).ok())?;
    let command_line = ["floodgate", "serve"]
        .into_iter()
        .map(str::to_owned)
        .chain(translation.args.iter().cloned());
    let cli = Cli::try_parse_from(command_line)?;
    Ok(Some((cli, translation)))
}

/// Sets up logging (and, with the `otel` feature, span export); the level comes from RUST_LOG,
/// else `default_filter`. The returned guard flushes exported spans when dropped.
fn init_logging(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    default_filter: &str,
) -> anyhow::Result<TelemetryGuard> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let (otel, guard) = otel_layer(otlp_endpoint)?;
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    match format {
        LogFormat::Human => registry.with(tracing_subscriber::fmt::layer()).init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json())
            .init(),
    }
    Ok(guard)
}

/// Flushes exported spans on drop.
struct TelemetryGuard {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

#[cfg(feature = "otel")]
fn otel_layer<S>(
    endpoint: Option<&str>,
) -> anyhow::Result<(Option<impl tracing_subscriber::Layer<S>>, TelemetryGuard)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;

    let Some(endpoint) = endpoint else {
        return Ok((None, TelemetryGuard { provider: None }));
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("floodgate")
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("floodgate"));
    Ok((
        Some(layer),
        TelemetryGuard {
            provider: Some(provider),
        },
    ))
}

#[cfg(not(feature = "otel"))]
fn otel_layer(
    endpoint: Option<&str>,
) -> anyhow::Result<(Option<tracing_subscriber::layer::Identity>, TelemetryGuard)> {
    if endpoint.is_some() {
        anyhow::bail!("--otlp-endpoint needs a floodgate built with `--features otel`");
    }
    Ok((None, TelemetryGuard {}))
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
