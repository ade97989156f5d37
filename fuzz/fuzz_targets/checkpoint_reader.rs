//! Any bytes into the checkpoint reader and converter: it must return an error or a result,
//! never panic, hang or allocate beyond what the input justifies (libFuzzer's -rss_limit_mb).
#![no_main]

use fairnas_model::pytorch::{convert_state_dict, read_checkpoint_bytes};
use fairnas_model::zoo::{fairnas_spec, FairnasModel, FairnasVariant};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(checkpoint) = read_checkpoint_bytes(data) else { return };
    let _ = checkpoint.top_level_keys();
    for key in [None, Some("model_state")] {
        if let Ok(state_dict) = checkpoint.state_dict(key) {
            let spec = fairnas_spec("fuzz", &FairnasModel::A.choices(), FairnasVariant::PLAIN);
            let _ = convert_state_dict(state_dict, &spec, None);
        }
    }
});
