//! Mutated real checkpoints (written by torch.save, both containers) fed to the reader and the
//! converter: every outcome must be a value or an error, never a panic. The long-running
//! coverage-guided version of this is the cargo-fuzz target in fuzz/ (not in CI).

use std::path::Path;

use fairnas_model::pytorch::{convert_state_dict, read_checkpoint_bytes};
use fairnas_model::zoo::{fairnas_spec, FairnasModel, FairnasVariant};
use proptest::prelude::*;

const FILES: [&str; 6] = [
    "plain.legacy.pth.tar",
    "plain.zip.pth.tar",
    "dtypes.legacy.pth",
    "dtypes.zip.pth",
    "transfer.legacy.pt.tar",
    "evil-popen.zip.pth",
];

fn originals() -> Vec<Vec<u8>> {
    FILES
        .iter()
        .map(|f| {
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/checkpoints").join(f))
                .unwrap()
        })
        .collect()
}

/// One edit; positions are fractions of the file length so they land anywhere in any file.
#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: f64,
        bit: u8,
    },
    Set {
        at: f64,
        byte: u8,
    },
    /// Overwrites 8 bytes with a little-endian integer (length fields, element counts).
    BigNumber {
        at: f64,
        value: u64,
    },
    Delete {
        at: f64,
        len: usize,
    },
    Insert {
        at: f64,
        bytes: Vec<u8>,
    },
    Truncate {
        at: f64,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = 0.0..1.0f64;
    prop_oneof![
        (at.clone(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (at.clone(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (at.clone(), prop_oneof![Just(u64::MAX), Just(1 << 62), Just(1 << 40), Just(0), any::<u64>()])
            .prop_map(|(at, value)| Mutation::BigNumber { at, value }),
        (at.clone(), 1..64usize).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (at.clone(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        at.prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(data: &mut Vec<u8>, m: &Mutation) {
    let pos = |at: f64, len: usize| ((at * len as f64) as usize).min(len.saturating_sub(1));
    let len = data.len();
    if len < 8 {
        return; // an earlier edit already cut the file to almost nothing
    }
    match m {
        Mutation::Flip { at, bit } => data[pos(*at, len)] ^= 1 << bit,
        Mutation::Set { at, byte } => data[pos(*at, len)] = *byte,
        Mutation::BigNumber { at, value } => {
            let p = pos(*at, len.saturating_sub(8));
            data[p..p + 8].copy_from_slice(&value.to_le_bytes());
        }
        Mutation::Delete { at, len: n } => {
            let p = pos(*at, len);
            data.drain(p..(p + n).min(len));
        }
        Mutation::Insert { at, bytes } => {
            let p = pos(*at, len);
            data.splice(p..p, bytes.iter().copied());
        }
        Mutation::Truncate { at } => data.truncate(pos(*at, len)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_checkpoints_never_panic(file in 0..FILES.len(), edits in proptest::collection::vec(mutation(), 1..4)) {
        thread_local!(static ORIGINALS: Vec<Vec<u8>> = originals());
        let mut data = ORIGINALS.with(|o| o[file].clone());
        for edit in &edits {
            apply(&mut data, edit);
        }
        if let Ok(checkpoint) = read_checkpoint_bytes(&data) {
            if let Ok(state_dict) = checkpoint.state_dict(None) {
                let spec = fairnas_spec("tiny", &FairnasModel::A.choices(), FairnasVariant::PLAIN);
                let _ = convert_state_dict(state_dict, &spec, None);
            }
        }
    }
}
