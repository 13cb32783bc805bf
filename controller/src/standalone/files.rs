//! The directory watch: which file-system events mean the manifests changed.

/// What a file-system event means for the manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Nothing a reader of the files sees: reads (the rescan raises those, and reacting
    /// to them would re-read forever), metadata, hidden files (temporaries, never read).
    None,
    /// A file is being written; more may follow.
    Partial,
    /// A file is complete: closed after writing, renamed into place, or removed.
    Complete,
}

pub(super) fn classify(event: &notify::Event) -> Change {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind};
    let hidden = |path: &std::path::PathBuf| path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'));
    if !event.paths.is_empty() && event.paths.iter().all(hidden) {
        return Change::None;
    }
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Modify(ModifyKind::Name(_))
        | EventKind::Remove(_)
        | EventKind::Create(CreateKind::Folder) => Change::Complete,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => Change::None,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any | EventKind::Other => Change::Partial,
    }
}
