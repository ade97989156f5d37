//! Reading image files into 8-bit RGB.

use std::path::{Path, PathBuf};

use image::RgbImage;

/// A file that could not be turned into pixels, with the file named.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read image {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot decode image {path}: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("image {path} is {width}x{height}, smaller than the {crop}x{crop} crop after resizing")]
    TooSmall { path: PathBuf, width: u32, height: u32, crop: u32 },
}

/// Decodes a JPEG or PNG (any colour type: grayscale, RGBA, CMYK JPEG) to RGB. EXIF orientation
/// is ignored, as PIL's `Image.open(..).convert("RGB")` ignores it.
pub fn load_rgb(path: &Path) -> Result<RgbImage, DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Read { path: path.into(), source })?;
    if bytes.starts_with(&[0xFF, 0xD8]) && !jpeg_has_end_marker(&bytes) {
        // The JPEG decoder fills missing scan data with grey instead of failing; PIL refuses
        // such files ("image file is truncated"), and so do we, so they are never silently scored.
        return Err(DataError::Decode {
            path: path.into(),
            reason: "truncated JPEG (no end-of-image marker after the scan)".into(),
        });
    }
    let img = image::load_from_memory(&bytes)
        .map_err(|e| DataError::Decode { path: path.into(), reason: e.to_string() })?;
    Ok(img.to_rgb8())
}

/// Whether an end-of-image marker (FF D9) follows the first start-of-scan (FF DA). Inside
/// entropy-coded data every FF byte is stuffed (FF 00) or a restart marker (FF D0-D7), so an FF D9
/// there can only be the real end marker; trailing bytes after it are allowed.
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let Some(sos) = bytes.windows(2).position(|w| w == [0xFF, 0xDA]) else {
        return false;
    };
    bytes[sos..].windows(2).any(|w| w == [0xFF, 0xD9])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("fairnas-decode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("corrupt.jpg");
        std::fs::write(&bad, b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap();
        let e = load_rgb(&bad).unwrap_err().to_string();
        assert!(e.contains("corrupt.jpg"), "{e}");
        let e = load_rgb(&dir.join("missing.jpg")).unwrap_err().to_string();
        assert!(e.contains("missing.jpg"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncated_jpeg_is_rejected_and_complete_ones_decode() {
        let photo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../data/images/n07920052_espresso.JPEG");
        let bytes = std::fs::read(&photo).unwrap();
        assert!(jpeg_has_end_marker(&bytes));
        let img = load_rgb(&photo).unwrap();
        assert!(img.width() > 0);
        for cut in [500, bytes.len() / 2, bytes.len() - 2] {
            assert!(!jpeg_has_end_marker(&bytes[..cut]), "cut at {cut}");
        }
        let dir = std::env::temp_dir().join(format!("fairnas-trunc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cut = dir.join("half.jpg");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let e = load_rgb(&cut).unwrap_err().to_string();
        assert!(e.contains("half.jpg") && e.contains("truncated"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn grayscale_jpeg_becomes_rgb() {
        let photo =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/images/n03804744_nail.JPEG");
        let img = load_rgb(&photo).unwrap();
        assert_eq!(img.dimensions(), (183, 280));
        assert!(img.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
    }
}
