//! Decode + resize + center crop of real ImageNet photos against PIL (which torchvision's
//! Resize/CenterCrop call on PIL images): the uint8 crops PIL made for the model parity fixtures
//! (fairnas-model/tests/fixtures: two bilinear crops in inputs.safetensors, three bicubic ones
//! in checkpoints/lite0-golden.safetensors) must be reproduced to a mean absolute error below
//! 0.5/255. Differences can only come from JPEG decoding (libjpeg-turbo vs the image crate's
//! decoder): the resampler itself is bit-exact (tests/pil_resize.rs).

use std::path::Path;

use fairnas_data::{center_crop, load_rgb, resize_shorter_side, Interpolation};

fn pil_crops(fixture: &str) -> (Vec<String>, Vec<u8>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fairnas-model/tests/fixtures").join(fixture);
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let images = meta.metadata().as_ref().unwrap()["images"].split(',').map(str::to_string).collect();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    (images, st.tensor("pixels").unwrap().data().to_vec())
}

#[test]
fn crops_of_real_photos_match_pil() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(shared) = fairnas_data::shared_data::for_test(&repo) else { return };
    let mut checked = 0;
    for (fixture, filter) in [
        ("inputs.safetensors", Interpolation::Bilinear),
        ("checkpoints/lite0-golden.safetensors", Interpolation::Bicubic),
    ] {
        let (images, pixels) = pil_crops(fixture);
        let per_image = 224 * 224 * 3;
        assert_eq!(pixels.len(), images.len() * per_image);
        for (i, name) in images.iter().enumerate() {
            let img = load_rgb(&shared.join("data/imagenet-sample").join(name)).unwrap();
            let ours = center_crop(&resize_shorter_side(&img, 256, filter), 224).unwrap().into_raw();
            let theirs = &pixels[i * per_image..(i + 1) * per_image];
            let abs: Vec<u32> = ours.iter().zip(theirs).map(|(a, b)| a.abs_diff(*b) as u32).collect();
            let mae = abs.iter().sum::<u32>() as f64 / abs.len() as f64;
            let max = abs.iter().max().unwrap();
            eprintln!("{name} ({filter:?}): mean |diff| {mae:.4}/255, max {max}/255");
            assert!(mae < 0.5, "{name}: mean absolute error {mae:.4}/255 is not below 0.5/255");
            checked += 1;
        }
    }
    assert_eq!(checked, 5);
}
