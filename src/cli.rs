//! The one-shot subcommands `render` and `check` (SPEC §8), consul-template's
//! `-dry -once` and a config check.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::discovery;
use crate::events::Event;
use crate::files;
use crate::haproxy;
use crate::model::{Catalog, Context, Desired};
use crate::pipeline::{self, StageError, Then};
use crate::render::{self, Rendered, Renderer};
use crate::settings::{Settings, SourceSettings};

/// Why `render` or `check` produced no config.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    CatalogFile(#[from] discovery::file::FileError),
    #[error("no answer from consul at {urls} within {waited:?}{last_error}")]
    NoConsulAnswer {
        urls: String,
        waited: Duration,
        last_error: String,
    },
    #[error("consul: {0}")]
    Consul(#[from] discovery::consul::ConsulError),
    #[error("--no-render: nothing to render")]
    NothingToRender,
    #[error(transparent)]
    Render(#[from] render::RenderError),
    #[error("cannot write the candidate config: {0}")]
    Stage(#[source] std::io::Error),
    #[error(transparent)]
    Check(#[from] haproxy::HaproxyError),
    #[error("cannot write the certificate store: {0}")]
    CertStore(#[source] std::io::Error),
}

/// How long the one-shot commands wait for Consul's first answer.
const FIRST_ANSWER: Duration = Duration::from_secs(15);

/// Reads the catalog once from the configured source.
pub async fn load_catalog(settings: &Settings) -> Result<Catalog, CliError> {
    match &settings.source {
        SourceSettings::File(p) => Ok(discovery::file::load(p)?),
        SourceSettings::Consul(cfg) => {
            // A bad CA, certificate, key or token file: said now, by name.
            discovery::consul::Client::new(cfg)?;
            let (tx, mut rx) = watch::channel(None::<Arc<Catalog>>);
            let health = Arc::new(discovery::Health::default());
            let task = tokio::spawn(discovery::consul::watch(cfg.clone(), tx, health.clone()));
            let got = tokio::time::timeout(FIRST_ANSWER, rx.wait_for(|c| c.is_some())).await;
            task.abort();
            match got {
                Ok(Ok(c)) => Ok(c.as_deref().cloned().unwrap_or_default()),
                _ => Err(CliError::NoConsulAnswer {
                    urls: cfg.urls.join(", "),
                    waited: FIRST_ANSWER,
                    last_error: health
                        .last_error()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default(),
                }),
            }
        }
        SourceSettings::External => Err(CliError::NothingToRender),
    }
}

async fn render_once(settings: &Settings) -> Result<Rendered, CliError> {
    let catalog = load_catalog(settings).await?;
    let tls = match &settings.certs_dir {
        Some(dir) => {
            crate::tls::prepare_once(dir, &settings.config_file).map_err(CliError::CertStore)?
        }
        None => None,
    };
    Ok(render_catalog(settings, &catalog, tls, false, &Default::default())?.0)
}

/// Renders `catalog` as the supervisor does (warnings logged); with `fit`,
/// the global maxconn lowered as the supervisor lowers it to fit the
/// servers. Returns the directory the config names its maps in too.
pub(crate) fn render_catalog(
    settings: &Settings,
    catalog: &Catalog,
    tls: Option<crate::model::TlsFrontend>,
    fit: bool,
    binds: &crate::listeners::Binds,
) -> Result<(Rendered, String), CliError> {
    let renderer = Renderer::new(
        settings.template.as_deref(),
        &settings.config_file,
        &settings.admin_socket(),
    )?;
    let (mut desired, warnings) = Desired::build(catalog, &Context::from(&settings.vars));
    desired.tls = tls;
    for w in &warnings {
        w.log();
    }
    let mut vars = settings.vars.clone();
    if fit {
        let servers = desired
            .services
            .iter()
            .map(|s| s.servers.len() as u64)
            .sum();
        if let Ok((limit, _)) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        {
            if let Some(m) =
                crate::policy::fitted_maxconn(vars.maxconn_global, Some(servers), limit)
            {
                vars.maxconn_global = m;
            }
        }
    }
    let (rendered, _) = crate::pipeline::render(&renderer, &desired, &vars, binds)?;
    Ok((rendered, renderer.maps_dir_str()))
}

/// `render`: prints the config to stdout; the maps it names are written
/// beside --config-file (new names only, nothing in place is touched).
pub async fn render(settings: &Settings) -> i32 {
    match render_once(settings).await {
        Ok(r) => {
            let dir = files::maps_dir(&settings.config_file);
            let write = std::fs::create_dir_all(&dir).and_then(|_| {
                for (name, text) in &r.maps {
                    let p = dir.join(name);
                    if !p.exists() {
                        files::write_atomic(&p, text.as_bytes())?;
                    }
                }
                Ok(())
            });
            if let Err(e) = write {
                crate::log!(warn, Event::WriteFailed, dir = %dir.display(), error = %e, "cannot write the map files");
            }
            print!("{}", r.config);
            0
        }
        Err(e) => {
            crate::log!(error, Event::Fatal, error = %e, "{e}");
            1
        }
    }
}

/// `check`: renders into a temporary directory and runs `haproxy -c`.
pub async fn check(settings: &Settings) -> i32 {
    let dir = match tempdir() {
        Ok(d) => d,
        Err(e) => {
            crate::log!(
                error,
                Event::Fatal,
                error = %e,
                "cannot create a temporary directory: {e}"
            );
            return 1;
        }
    };
    let cfg = dir.join("haproxy.cfg");
    let mut s = settings.clone();
    s.config_file = cfg.clone();
    let result = async {
        let r = render_once(&s).await?;
        let bin = s.haproxy_bin.clone();
        pipeline::stage_and_check(&cfg, &r, Then::Discard, |staged| async move {
            haproxy::check_sync(&bin, &staged)
        })
        .await
        .map_err(|e| match e {
            StageError::Invalid(e) => CliError::Check(e),
            StageError::Stage(e) | StageError::Commit(e) => CliError::Stage(e),
        })
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(()) => {
            println!("configuration is valid");
            0
        }
        Err(e) => {
            println!("{e}");
            1
        }
    }
}

fn tempdir() -> std::io::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("haproxy-supervisor-check-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
