//! What to type next: the library's errors name files, keys and layers; the command line adds
//! the flag that fixes them.

use fairnas_model::selection::SelectionError;
use fairnas_search::SearchError;
use fairnas_supernet::TrainError;

/// The flag hint for a failed command, if its error is one the flags can fix.
pub fn for_error(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|cause| {
        if let Some(t) = cause.downcast_ref::<TrainError>() {
            return train(t);
        }
        if let Some(s) = cause.downcast_ref::<SelectionError>() {
            return selection(s);
        }
        if let Some(fairnas_data::evaluate::EvalError::Image(_)) = cause.downcast_ref() {
            return Some("use --on-bad-image skip to leave bad images out".into());
        }
        match cause.downcast_ref::<SearchError>()? {
            SearchError::Train(t) => train(t),
            SearchError::SearchExists(_) => {
                Some("pass --resume to continue it, or pick another --out".into())
            }
            SearchError::OtherSettings { .. } => Some("use another --out".into()),
            SearchError::NeedsLatencyTable(_) => {
                Some("pass --latency-table FILE (fairnas latency-table)".into())
            }
            _ => None,
        }
    })
}

fn train(e: &TrainError) -> Option<String> {
    match e {
        TrainError::RunExists { .. } => Some("pass --resume to continue it, or choose another --out".into()),
        TrainError::NoCheckpoint(_) => Some("nothing to --resume: start without it".into()),
        TrainError::ResumeConflict { .. } => Some("--resume keeps the run's settings".into()),
        TrainError::Classes { found, .. } => {
            Some(format!("pass --classes {found} to train a {found}-way classifier"))
        }
        _ => None,
    }
}

fn selection(e: &SelectionError) -> Option<String> {
    match e {
        SelectionError::NoModel | SelectionError::Alternatives => {
            Some("use one of --model NAME, --choices DIGITS or --arch BLOCKS".into())
        }
        SelectionError::SpaceWithoutChoices => Some("--space goes with --choices".into()),
        _ => None,
    }
}
