//! Dataset layouts and the parallel loader on small trees built from the repository's real photos.

use std::path::{Path, PathBuf};

use fairnas_data::{Dataset, EvalLoader, EvalTransform, OnBadImage, Source};

fn photo(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/images").join(name)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fairnas-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy(from: &str, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(photo(from), to).unwrap();
}

const ESPRESSO: &str = "n07920052_espresso.JPEG";
const NAIL: &str = "n03804744_nail.JPEG";

#[test]
fn wnid_folders_keep_imagenet_labels_even_for_a_subset() {
    let root = scratch("wnid");
    copy(ESPRESSO, &root.join("n07920052/a.JPEG"));
    copy(NAIL, &root.join("n03804744/b.JPEG"));
    std::fs::write(root.join("n03804744/notes.txt"), "not an image").unwrap();
    let d = Dataset::image_folder(&root).unwrap();
    let labels: Vec<usize> = d.samples.iter().map(|s| s.label).collect();
    assert_eq!(labels, [677, 967], "nail = 677, espresso = 967 in the 1000-class list");
    assert_eq!(d.num_classes, 1000);
    assert_eq!(d.ignored, [root.join("n03804744/notes.txt")]);
    // Plain folder names: sorted position.
    let plain = scratch("plain");
    copy(ESPRESSO, &plain.join("zebra/a.JPEG"));
    copy(NAIL, &plain.join("apple/b.JPEG"));
    let d = Dataset::image_folder(&plain).unwrap();
    assert_eq!(d.samples.iter().map(|s| s.label).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(d.num_classes, 2);
    // An empty class folder is an error naming it.
    std::fs::create_dir_all(plain.join("mango")).unwrap();
    let err = Dataset::image_folder(&plain).unwrap_err().to_string();
    assert!(err.contains("mango") && err.contains("no images"), "{err}");
    std::fs::remove_dir_all(root).unwrap();
    std::fs::remove_dir_all(plain).unwrap();
}

#[test]
fn flat_layouts_by_ground_truth_and_by_file_name() {
    let dir = scratch("flat");
    copy(ESPRESSO, &dir.join("ILSVRC2012_val_00000002.JPEG"));
    copy(NAIL, &dir.join("ILSVRC2012_val_00000001.JPEG"));
    let gt = dir.join("val.txt");
    std::fs::write(&gt, "ILSVRC2012_val_00000001.JPEG 677\nILSVRC2012_val_00000002.JPEG 967\n").unwrap();
    let d = Dataset::flat_with_ground_truth(&dir, &gt).unwrap();
    assert_eq!(d.samples.iter().map(|s| s.label).collect::<Vec<_>>(), [677, 967]);
    assert_eq!(d.ignored, std::slice::from_ref(&gt));
    std::fs::write(&gt, "ILSVRC2012_val_00000003.JPEG 1\n").unwrap();
    let err = Dataset::flat_with_ground_truth(&dir, &gt).unwrap_err().to_string();
    assert!(err.contains("ILSVRC2012_val_00000003.JPEG") && err.contains("missing"), "{err}");
    std::fs::write(&gt, "ILSVRC2012_val_00000001.JPEG x\n").unwrap();
    assert!(Dataset::flat_with_ground_truth(&dir, &gt).unwrap_err().to_string().contains("line 1"));

    let named = scratch("named");
    copy(ESPRESSO, &named.join(ESPRESSO));
    copy(NAIL, &named.join(NAIL));
    let d = Dataset::detect_imagenet(&named).unwrap();
    assert_eq!(d.samples.iter().map(|s| s.label).collect::<Vec<_>>(), [677, 967]);
    std::fs::write(named.join("n99999999_fake.JPEG"), "x").unwrap();
    let err = Dataset::labels_from_filenames(&named).unwrap_err().to_string();
    assert!(err.contains("n99999999_fake.JPEG"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(named).unwrap();
}

#[test]
fn cifar_binary_batches_and_jpeg_tree() {
    let root = scratch("cifar");
    // Two records: label 3 (cat) with a red image, label 9 (truck) with a blue one.
    let mut bytes = Vec::new();
    for (label, channel) in [(3u8, 0usize), (9, 2)] {
        bytes.push(label);
        for c in 0..3 {
            bytes.extend(std::iter::repeat_n(if c == channel { 200u8 } else { 10 }, 1024));
        }
    }
    std::fs::write(root.join("test_batch.bin"), &bytes).unwrap();
    let d = Dataset::cifar10(&root, "test").unwrap();
    assert_eq!(d.samples.iter().map(|s| s.label).collect::<Vec<_>>(), [3, 9]);
    let img = match &d.samples[1].source {
        Source::CifarRecord { file, offset } => {
            fairnas_data::dataset::read_cifar_record(file, *offset).unwrap()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(img.get_pixel(5, 7).0, [10, 10, 200]);
    std::fs::write(root.join("test_batch.bin"), &bytes[..3000]).unwrap();
    assert!(Dataset::cifar10(&root, "test").unwrap_err().to_string().contains("3073-byte records"));
    assert!(Dataset::cifar10(&root, "train").unwrap_err().to_string().contains("data_batch_1.bin"));
    // The JPEG tree takes precedence and must have the 10 class folders.
    for (i, class) in fairnas_data::classes::CIFAR10_CLASSES.iter().enumerate() {
        copy(if i % 2 == 0 { ESPRESSO } else { NAIL }, &root.join(format!("test/{class}/0001.jpg")));
    }
    let d = Dataset::cifar10(&root, "test").unwrap();
    assert_eq!(d.samples.iter().map(|s| s.label).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn loader_keeps_order_and_applies_the_bad_image_policy() {
    let root = scratch("loader");
    for i in 0..7 {
        copy(if i % 2 == 0 { ESPRESSO } else { NAIL }, &root.join(format!("n07920052/{i}.JPEG")));
    }
    let truncated = std::fs::read(photo(ESPRESSO)).unwrap();
    std::fs::write(root.join("n07920052/3.JPEG"), &truncated[..truncated.len() / 2]).unwrap();
    let samples = Dataset::image_folder(&root).unwrap().samples;
    let transform = EvalTransform::default();
    // Skip: six images in order, the bad one reported by index.
    let batches: Vec<_> =
        EvalLoader::new(samples.clone(), transform, 3, 1, OnBadImage::Skip).map(|b| b.unwrap()).collect();
    let indices: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(indices, [0, 1, 2, 4, 5, 6]);
    let skipped: Vec<_> =
        batches.iter().flat_map(|b| b.skipped.iter().map(|(i, e)| (*i, e.to_string()))).collect();
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].0 == 3 && skipped[0].1.contains("3.JPEG"), "{skipped:?}");
    // Each image's pixels are the same as a direct transform of the file.
    let direct = transform.load(&root.join("n07920052/4.JPEG")).unwrap();
    let b = &batches[1];
    let at = b.indices.iter().position(|&i| i == 4).unwrap();
    let n = direct.len();
    assert_eq!(&b.pixels[at * n..(at + 1) * n], direct.as_slice());
    // Fail: the error names the file.
    let results: Vec<_> = EvalLoader::new(samples, transform, 3, 1, OnBadImage::Fail).collect();
    let err = results.iter().find_map(|r| r.as_ref().err()).expect("an error").to_string();
    assert!(err.contains("3.JPEG"), "{err}");
    std::fs::remove_dir_all(root).unwrap();
}
