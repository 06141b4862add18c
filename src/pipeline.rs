//! The one render-and-check pipeline, shared by `render`, `check`, `plan`
//! and `run`: a desired state rendered into a config and its layout
//! ([`render`]), and a candidate staged beside the running file, checked
//! by `haproxy -c`, and put in place or removed ([`stage_and_check`]).

use std::future::Future;
use std::path::{Path, PathBuf};

use crate::files;
use crate::haproxy::HaproxyError;
use crate::listeners::Binds;
use crate::live::Layout;
use crate::model::{Desired, HaproxyVars};
use crate::render::{RenderError, Rendered, Renderer};

/// Renders `desired` with the sockets `binds` names; the layout is what
/// the live diff reads.
pub fn render(
    renderer: &Renderer,
    desired: &Desired,
    vars: &HaproxyVars,
    binds: &Binds,
) -> Result<(Rendered, Layout), RenderError> {
    let rendered = renderer.render_with(desired, vars, binds)?;
    let layout = Layout::new(&rendered, &renderer.maps_dir_str());
    Ok((rendered, layout))
}

/// Why a candidate was not put in place.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("cannot write the candidate config: {0}")]
    Stage(#[source] std::io::Error),
    #[error(transparent)]
    Invalid(HaproxyError),
    #[error("cannot put the new config in place: {0}")]
    Commit(#[source] std::io::Error),
}

/// Whether a candidate that passes goes in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Swap it in (with its maps).
    Commit,
    /// Only check it (`haproxy-supervisor check`).
    Discard,
}

/// Stages `candidate` beside `target`, checks the staged file with
/// `check` (`haproxy -c`, at whatever priority the caller runs it), then
/// puts it in place or removes it. A candidate that fails is removed;
/// `target` is untouched.
pub async fn stage_and_check<F, Fut>(
    target: &Path,
    candidate: &Rendered,
    then: Then,
    check: F,
) -> Result<(), StageError>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = Result<(), HaproxyError>>,
{
    let staged = files::stage(target, candidate).map_err(StageError::Stage)?;
    if let Err(e) = check(staged.candidate.clone()).await {
        staged.abort();
        return Err(StageError::Invalid(e));
    }
    match then {
        Then::Commit => staged.commit(candidate).map_err(StageError::Commit),
        Then::Discard => {
            staged.abort();
            Ok(())
        }
    }
}
