//! Colour handling of the JPEG decoder against PIL's `Image.open(..).convert("RGB")` on CMYK,
//! grayscale and EXIF-rotated JPEGs (tests/fixtures/generate_decode.py). JPEG decoders differ in
//! their IDCT and chroma upsampling, so equality is asked to within a mean absolute error below
//! 0.5/255 (the tolerance of the evaluation protocol's preprocessing parity); geometry must match
//! exactly (EXIF orientation is ignored, as PIL ignores it).

use std::path::Path;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

#[test]
fn cmyk_gray_and_exif_rotated_jpegs_decode_like_pil() {
    let expected = std::fs::read(fixture("decode.safetensors")).unwrap();
    let expected = safetensors::SafeTensors::deserialize(&expected).unwrap();
    for name in ["cmyk", "gray", "exif-rotated"] {
        let img = fairnas_data::load_rgb(&fixture(&format!("{name}.jpg"))).unwrap();
        let want = expected.tensor(&name.replace('-', "_")).unwrap();
        assert_eq!([img.height() as usize, img.width() as usize, 3], want.shape(), "{name}: geometry");
        let diffs: Vec<u32> =
            img.as_raw().iter().zip(want.data()).map(|(a, b)| a.abs_diff(*b) as u32).collect();
        let mae = diffs.iter().sum::<u32>() as f64 / diffs.len() as f64;
        eprintln!("{name}: mean |diff| {mae:.4}/255, max {}/255", diffs.iter().max().unwrap());
        assert!(mae < 0.5, "{name}: mean absolute error {mae:.4}/255");
    }
}
