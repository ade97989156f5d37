//! The resampler reproduces Pillow byte for byte (fixtures from tests/fixtures/generate_resize.py).

use fairnas_data::{load_rgb, resize, Interpolation};

#[test]
fn matches_pillow_exactly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let patch = load_rgb(&dir.join("patch.png")).unwrap();
    let golden = safetensors_u8(&dir.join("resize.safetensors"));
    assert_eq!(golden.len(), 10);
    for (name, (shape, want)) in golden {
        let (filter, size) = name.split_once('_').unwrap();
        let filter: Interpolation = filter.parse().unwrap();
        let (w, h) = size.split_once('x').unwrap();
        let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
        assert_eq!(shape, vec![h as usize, w as usize, 3]);
        let got = resize(&patch, w, h, filter).into_raw();
        let mismatches = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(mismatches, 0, "{name}: {mismatches} of {} bytes differ from Pillow", want.len());
    }
}

/// (name, (shape, bytes)) of every tensor in a safetensors file.
type NamedBytes = Vec<(String, (Vec<usize>, Vec<u8>))>;

fn safetensors_u8(path: &std::path::Path) -> NamedBytes {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, (v.shape().to_vec(), v.data().to_vec()))).collect()
}
