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
    let img = image::load_from_memory(&bytes)
        .map_err(|e| DataError::Decode { path: path.into(), reason: e.to_string() })?;
    Ok(img.to_rgb8())
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
}
