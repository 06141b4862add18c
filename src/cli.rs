//! The one-shot subcommands `render` and `check` (SPEC §8), consul-template's
//! `-dry -once` and a config check.

use crate::events::Event;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::discovery;
use crate::haproxy;
use crate::model::{Catalog, Context, Desired};
use crate::render::{self, Rendered, Renderer};
use crate::settings::{Settings, SourceSettings};

/// How long the one-shot commands wait for Consul's first answer.
const FIRST_ANSWER: Duration = Duration::from_secs(15);

/// Reads the catalog once from the configured source.
pub async fn load_catalog(settings: &Settings) -> Result<Catalog, String> {
    match &settings.source {
        SourceSettings::File(p) => discovery::file::load(p).map_err(|e| e.to_string()),
        SourceSettings::Consul { url, token, cacert } => {
            let mut cfg = discovery::consul::ConsulConfig::new(url.clone());
            cfg.token = token.clone();
            cfg.cacert = cacert.clone();
            let (tx, mut rx) = watch::channel(None::<Arc<Catalog>>);
            let task = tokio::spawn(discovery::consul::watch(cfg, tx));
            let got = tokio::time::timeout(FIRST_ANSWER, rx.wait_for(|c| c.is_some())).await;
            task.abort();
            match got {
                Ok(Ok(c)) => Ok(c.as_deref().cloned().unwrap_or_default()),
                _ => Err(format!(
                    "no answer from consul at {url} within {FIRST_ANSWER:?}"
                )),
            }
        }
        SourceSettings::External => Err("--no-render: nothing to render".into()),
    }
}

async fn render_once(settings: &Settings) -> Result<Rendered, String> {
    let catalog = load_catalog(settings).await?;
    let renderer = Renderer::new(
        settings.template.as_deref(),
        &settings.config_file,
        &settings.admin_socket(),
    )
    .map_err(|e| e.to_string())?;
    let (desired, warnings) = Desired::build(&catalog, &Context::from(&settings.vars));
    for w in &warnings {
        tracing::warn!(event = %Event::Warning, "{w}");
    }
    renderer
        .render(&desired, &settings.vars)
        .map_err(|e| e.to_string())
}

/// `render`: prints the config to stdout; the maps it names are written
/// beside --config-file (new names only, nothing in place is touched).
pub async fn render(settings: &Settings) -> i32 {
    match render_once(settings).await {
        Ok(r) => {
            let dir = render::maps_dir(&settings.config_file);
            let write = std::fs::create_dir_all(&dir).and_then(|_| {
                for (name, text) in &r.maps {
                    let p = dir.join(name);
                    if !p.exists() {
                        render::write_atomic(&p, text.as_bytes())?;
                    }
                }
                Ok(())
            });
            if let Err(e) = write {
                tracing::warn!(event = %Event::WriteFailed, dir = %dir.display(), error = %e, "cannot write the map files");
            }
            print!("{}", r.config);
            0
        }
        Err(e) => {
            tracing::error!(event = %Event::Fatal, "{e}");
            1
        }
    }
}

/// `check`: renders into a temporary directory and runs `haproxy -c`.
pub async fn check(settings: &Settings) -> i32 {
    let dir = match tempdir() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(event = %Event::Fatal, "cannot create a temporary directory: {e}");
            return 1;
        }
    };
    let cfg = dir.join("haproxy.cfg");
    let mut s = settings.clone();
    s.config_file = cfg.clone();
    let result = async {
        let r = render_once(&s).await?;
        let staged = render::stage(&cfg, &r).map_err(|e| e.to_string())?;
        let checked =
            haproxy::check_sync(&s.haproxy_bin, &staged.candidate).map_err(|e| e.to_string());
        staged.abort();
        checked
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
