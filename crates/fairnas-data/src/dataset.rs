//! Labelled image collections: where every sample's pixels come from and its class.
//!
//! Layouts (docs/FAIRNAS.md section 4):
//! - image folder `<root>/<class>/*`: class = sorted folder position, except when every folder
//!   is an ImageNet wnid: then class = the wnid's index in the standard 1000-class list, so a
//!   subset with missing classes is still labelled right;
//! - the official flat validation folder plus a ground-truth list (`val.txt`:
//!   `ILSVRC2012_val_00000001.JPEG 65`);
//! - a flat folder of `<wnid>_<anything>.JPEG` files, labelled by the wnid in the name (the
//!   shared 1000-photo ImageNet sample);
//! - CIFAR-10 as its binary batches (`data_batch_{1..5}.bin`, `test_batch.bin`: records of one
//!   label byte + 3072 bytes of 32x32 RGB planes) or as the JPEG tree `<split>/<class>/*.jpg`.
//!
//! Samples only say where the pixels are; decoding happens in the loader, so opening a dataset
//! of any size costs a directory listing.

use std::path::{Path, PathBuf};

use crate::classes::{imagenet_index, imagenet_wnids, looks_like_wnid, CIFAR10_CLASSES};

/// Where one sample's pixels are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A JPEG or PNG file.
    File(PathBuf),
    /// One record of a CIFAR-10 binary batch: 3072 bytes (R, G, B planes of 32x32) at `offset`.
    CifarRecord { file: PathBuf, offset: u64 },
}

impl Source {
    /// The path to name in messages (`batch.bin#1234` for a CIFAR record).
    pub fn describe(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::CifarRecord { file, offset } => {
                format!("{}#{}", file.display(), offset / CIFAR_RECORD_BYTES as u64)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub source: Source,
    pub label: usize,
}

/// A labelled collection of samples.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub samples: Vec<Sample>,
    /// Number of classes the labels index into (1000 for wnid-labelled data).
    pub num_classes: usize,
    /// Human-readable description of the layout, for logs and reports.
    pub layout: String,
    /// Files present but not used (non-image extensions), reported rather than dropped silently.
    pub ignored: Vec<PathBuf>,
}

/// A dataset that cannot be opened, with the offending path.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Layout { path: PathBuf, message: String },
}

const CIFAR_RECORD_BYTES: usize = 3073;
const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "jfif"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io { path: path.to_path_buf(), source }
}

fn layout_err(path: &Path, message: impl Into<String>) -> DatasetError {
    DatasetError::Layout { path: path.to_path_buf(), message: message.into() }
}

/// Sorted entries of a folder, split into (folders, files).
fn list(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DatasetError> {
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        if path.is_dir() {
            dirs.push(path);
        } else {
            files.push(path);
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

fn file_stem_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

impl Dataset {
    /// Keeps the first `n` samples (deterministic: samples are in sorted order).
    pub fn limit(mut self, n: usize) -> Self {
        self.samples.truncate(n);
        self
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// `<root>/<class>/*`. An empty class folder is an error naming it (it would silently shift
    /// every later label otherwise).
    pub fn image_folder(root: &Path) -> Result<Dataset, DatasetError> {
        let (dirs, _) = list(root)?;
        if dirs.is_empty() {
            return Err(layout_err(root, "no class folders (expected <root>/<class>/<image>)"));
        }
        let names: Vec<String> = dirs.iter().map(|d| file_stem_name(d)).collect();
        let by_wnid = names.iter().all(|n| looks_like_wnid(n) && imagenet_index(n).is_some());
        let mut samples = Vec::new();
        let mut ignored = Vec::new();
        for (position, (dir, name)) in dirs.iter().zip(&names).enumerate() {
            let label = if by_wnid { imagenet_index(name).expect("checked above") } else { position };
            let (_, files) = list(dir)?;
            let before = samples.len();
            for file in files {
                if is_image(&file) {
                    samples.push(Sample { source: Source::File(file), label });
                } else {
                    ignored.push(file);
                }
            }
            if samples.len() == before {
                return Err(layout_err(dir, "class folder holds no images"));
            }
        }
        let (num_classes, layout) = if by_wnid {
            (1000, format!("image folder of {} ImageNet wnid classes", dirs.len()))
        } else {
            (dirs.len(), format!("image folder of {} classes", dirs.len()))
        };
        Ok(Dataset { samples, num_classes, layout, ignored })
    }

    /// The official flat validation folder with its ground truth (`<file> <index>` per line).
    /// Every listed file must exist; files not listed are reported as ignored.
    pub fn flat_with_ground_truth(dir: &Path, ground_truth: &Path) -> Result<Dataset, DatasetError> {
        let text = std::fs::read_to_string(ground_truth).map_err(io_err(ground_truth))?;
        let mut samples = Vec::new();
        let mut listed = std::collections::HashSet::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let bad = || {
                layout_err(
                    ground_truth,
                    format!("line {}: expected '<file> <class index>', got {line:?}", n + 1),
                )
            };
            let (file, label) = line.rsplit_once(char::is_whitespace).ok_or_else(bad)?;
            let label: usize = label.parse().map_err(|_| bad())?;
            if label >= 1000 {
                return Err(bad());
            }
            let path = dir.join(file.trim());
            if !path.is_file() {
                return Err(layout_err(&path, format!("listed in {} but missing", ground_truth.display())));
            }
            listed.insert(path.clone());
            samples.push(Sample { source: Source::File(path), label });
        }
        samples.sort_by_key(|s| s.source.describe());
        let (_, files) = list(dir)?;
        let ignored = files.into_iter().filter(|f| !listed.contains(f)).collect();
        Ok(Dataset { samples, num_classes: 1000, layout: "flat folder + ground-truth list".into(), ignored })
    }

    /// A flat folder of `<wnid>_<name>.<ext>` images, labelled by the wnid in each name.
    pub fn labels_from_filenames(dir: &Path) -> Result<Dataset, DatasetError> {
        let (_, files) = list(dir)?;
        let mut samples = Vec::new();
        let mut ignored = Vec::new();
        for file in files {
            if !is_image(&file) {
                ignored.push(file);
                continue;
            }
            let name = file_stem_name(&file);
            let wnid = name.split(['_', '.']).next().unwrap_or_default();
            let label = imagenet_index(wnid).ok_or_else(|| {
                layout_err(
                    &file,
                    "file name does not start with an ImageNet wnid (expected <wnid>_<name>.JPEG)",
                )
            })?;
            samples.push(Sample { source: Source::File(file), label });
        }
        if samples.is_empty() {
            return Err(layout_err(dir, "no images"));
        }
        Ok(Dataset {
            samples,
            num_classes: 1000,
            layout: "flat folder labelled by wnid file names".into(),
            ignored,
        })
    }

    /// Picks the layout of `root` for `fairnas verify`: class folders, else a flat folder of
    /// wnid-named files.
    pub fn detect_imagenet(root: &Path) -> Result<Dataset, DatasetError> {
        let (dirs, files) = list(root)?;
        if !dirs.is_empty() {
            Self::image_folder(root)
        } else if files
            .iter()
            .any(|f| looks_like_wnid(file_stem_name(f).split('_').next().unwrap_or_default()))
        {
            Self::labels_from_filenames(root)
        } else {
            Err(layout_err(
                root,
                "neither <root>/<class>/* folders nor <wnid>_*.JPEG files; for the flat official layout pass --ground-truth val.txt",
            ))
        }
    }

    /// CIFAR-10's split (`train` or `test`) from either the binary batches or the JPEG tree,
    /// whichever `root` holds (`root` may also be the `cifar-10-batches-bin` folder's parent).
    pub fn cifar10(root: &Path, split: &str) -> Result<Dataset, DatasetError> {
        let tree = root.join(split);
        if tree.is_dir() {
            let (dirs, _) = list(&tree)?;
            let names: Vec<String> = dirs.iter().map(|d| file_stem_name(d)).collect();
            if names != CIFAR10_CLASSES {
                return Err(layout_err(
                    &tree,
                    format!("expected the 10 CIFAR-10 class folders, found {names:?}"),
                ));
            }
            let mut dataset = Self::image_folder(&tree)?;
            dataset.layout = format!("CIFAR-10 {split} JPEG tree");
            return Ok(dataset);
        }
        let bin = if root.join("cifar-10-batches-bin").is_dir() {
            root.join("cifar-10-batches-bin")
        } else {
            root.to_path_buf()
        };
        let files: Vec<PathBuf> = match split {
            "test" => vec![bin.join("test_batch.bin")],
            "train" => (1..=5).map(|i| bin.join(format!("data_batch_{i}.bin"))).collect(),
            other => {
                return Err(layout_err(root, format!("unknown CIFAR-10 split '{other}' (train or test)")))
            }
        };
        let mut samples = Vec::new();
        for file in files {
            let bytes = std::fs::read(&file).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    layout_err(
                        root,
                        format!("neither {}/<class>/ nor {} exists", tree.display(), file.display()),
                    )
                } else {
                    DatasetError::Io { path: file.clone(), source }
                }
            })?;
            if bytes.len() % CIFAR_RECORD_BYTES != 0 {
                return Err(layout_err(
                    &file,
                    format!("{} bytes is not a whole number of 3073-byte records", bytes.len()),
                ));
            }
            for (i, record) in bytes.chunks_exact(CIFAR_RECORD_BYTES).enumerate() {
                let label = record[0] as usize;
                if label >= 10 {
                    return Err(layout_err(&file, format!("record {i} has label {label}")));
                }
                samples.push(Sample {
                    source: Source::CifarRecord {
                        file: file.clone(),
                        offset: (i * CIFAR_RECORD_BYTES) as u64,
                    },
                    label,
                });
            }
        }
        Ok(Dataset {
            samples,
            num_classes: 10,
            layout: format!("CIFAR-10 {split} binary batches"),
            ignored: Vec::new(),
        })
    }
}

/// Reads the pixels of one CIFAR record as an RGB image.
pub fn read_cifar_record(file: &Path, offset: u64) -> Result<image::RgbImage, crate::DataError> {
    use std::io::{Read, Seek, SeekFrom};
    let read = |e| crate::DataError::Read { path: file.to_path_buf(), source: e };
    let mut f = std::fs::File::open(file).map_err(read)?;
    f.seek(SeekFrom::Start(offset + 1)).map_err(read)?;
    let mut planes = vec![0u8; 3072];
    f.read_exact(&mut planes).map_err(read)?;
    let mut img = image::RgbImage::new(32, 32);
    for (i, p) in img.pixels_mut().enumerate() {
        p.0 = [planes[i], planes[1024 + i], planes[2048 + i]];
    }
    Ok(img)
}

/// For callers that need the ImageNet wnid of a label (reports).
pub fn imagenet_wnid(label: usize) -> Option<&'static str> {
    imagenet_wnids().get(label).copied()
}
