//! The `haproxy-supervisor` binary: argument parsing and one call into the
//! library.

use std::process::ExitCode;

use clap::Parser;
use haproxy_supervisor::events::Event;
use haproxy_supervisor::settings::{self, Cli, Command, Facts, LogFormat, Settings};
use haproxy_supervisor::{cli, plan, supervisor};

fn main() -> ExitCode {
    let args = Cli::parse();
    // What the machine says: the open-files limit (raised as far as it
    // goes) and the user HAProxy is to run as.
    let facts = Facts::read(&args.options, haproxy_supervisor::process::raise_fd_limit());
    let (settings, notes) = match Settings::build(&args.options, &facts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("haproxy-supervisor: {e}");
            return ExitCode::from(bad_settings(args.command));
        }
    };
    init_tracing(settings.log_format);
    // The Consul token is ours alone: HAProxy, haproxy -c and every other
    // child start without it (their environment is inherited from ours).
    // Still single-threaded here, so changing the environment is sound.
    for var in settings::secret_vars() {
        std::env::remove_var(var);
    }
    match notes.user {
        None => {}
        Some(note) => haproxy_supervisor::log!(warn, Event::Degraded, what = "user", "{note}"),
    }
    if let Some(w) = notes.fd_fit {
        haproxy_supervisor::log!(
            warn,
            Event::Warning,
            tag = "HAPROXY_MAXCONN_GLOBAL",
            reason = %w,
            "{w}"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("haproxy-supervisor: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async move {
        match args.command.unwrap_or(Command::Run) {
            Command::Run => match supervisor::run(settings).await {
                Ok(code) => code,
                Err(e) => {
                    haproxy_supervisor::log!(error, Event::Fatal, error = %e, "{e}");
                    1
                }
            },
            Command::Render => cli::render(&settings).await,
            Command::Check => cli::check(&settings).await,
            Command::Plan { format } => plan::run(&settings, format).await,
        }
    });
    // Leaves blocked tasks (a Consul long poll) behind instead of waiting.
    runtime.shutdown_background();
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// The exit code of a bad setting: 2, except for `plan`, whose 2 means
/// "live changes only".
fn bad_settings(command: Option<Command>) -> u8 {
    match command {
        Some(Command::Plan { .. }) => 1,
        _ => 2,
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HAPROXY_SUPERVISOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
