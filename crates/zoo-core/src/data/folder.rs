//! Image folders: `ROOT/<split>/<class>/*.{png,jpg,jpeg}` (torchvision's ImageFolder layout).
//! Class index = position of the folder name in sorted order; files are read in sorted order.

use std::path::{Path, PathBuf};

use candle_core::Result;
use rayon::prelude::*;

use super::{ImageDataset, Split};

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        .unwrap_or(false)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| candle_core::Error::Msg(format!("{}: cannot list: {e}", dir.display())))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    Ok(paths)
}

/// Decodes one image to `channels` (1 = grey, 3 = RGB) as CHW bytes.
pub fn decode_image(path: &Path, channels: usize) -> Result<(usize, usize, Vec<u8>)> {
    let img = image::open(path).map_err(|e| {
        candle_core::Error::Msg(format!("{}: cannot decode image: {e}", path.display()))
    })?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let hwc: Vec<u8> = match channels {
        1 => img.into_luma8().into_raw(),
        3 => img.into_rgb8().into_raw(),
        c => candle_core::bail!(
            "{}: {c} channels requested, expected 1 or 3",
            path.display()
        ),
    };
    // HWC -> CHW
    let mut chw = vec![0u8; hwc.len()];
    for (i, px) in hwc.chunks_exact(channels).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            chw[c * h * w + i] = v;
        }
    }
    Ok((h, w, chw))
}

/// An image file and its class's label.
type LabelledFile = (PathBuf, u8);

/// The class names (folder names, in order) and every image file with its label; an error for
/// an empty class folder or more than 256 classes.
fn list_classes(dir: &Path, class_dirs: &[PathBuf]) -> Result<(Vec<String>, Vec<LabelledFile>)> {
    let mut files = Vec::new();
    let mut classes = Vec::new();
    for (label, class_dir) in class_dirs.iter().enumerate() {
        let images: Vec<PathBuf> = sorted_entries(class_dir)?
            .into_iter()
            .filter(|p| is_image(p))
            .collect();
        if images.is_empty() {
            candle_core::bail!(
                "{}: empty class folder (no .png, .jpg or .jpeg files)",
                class_dir.display()
            )
        }
        if label > u8::MAX as usize {
            candle_core::bail!("{}: more than 256 classes", dir.display())
        }
        classes.push(
            class_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
        files.extend(images.into_iter().map(|p| (p, label as u8)));
    }
    Ok((classes, files))
}

/// One split of an image folder dataset, every image converted to `channels`.
/// All images must share the first image's size.
pub fn load_image_folder(root: &Path, split: Split, channels: usize) -> Result<ImageDataset> {
    load_image_folder_fitted(root, split, channels, None)
}

/// How an image folder's images of any size are brought to one: torchvision's `Resize` of the
/// shorter side to `shorter`, then `CenterCrop` to `crop` x `crop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    pub shorter: usize,
    pub crop: usize,
}

/// [`load_image_folder`], each image first resized and centre-cropped by `fit` when given
/// (then the images may have any sizes).
pub fn load_image_folder_fitted(
    root: &Path,
    split: Split,
    channels: usize,
    fit: Option<Fit>,
) -> Result<ImageDataset> {
    let dir = root.join(split.name());
    if !dir.is_dir() {
        candle_core::bail!(
            "{}: missing the {} split folder (expected {}/<class>/*.png|jpg)",
            dir.display(),
            split.name(),
            dir.display()
        )
    }
    let class_dirs: Vec<PathBuf> = sorted_entries(&dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    if class_dirs.is_empty() {
        candle_core::bail!("{}: no class folders", dir.display())
    }
    let (classes, files) = list_classes(&dir, &class_dirs)?;
    let decoded: Vec<(usize, usize, Vec<u8>)> = files
        .par_iter()
        .map(|(path, _)| {
            let (h, w, chw) = decode_image(path, channels)?;
            let Some(Fit { shorter, crop }) = fit else {
                return Ok((h, w, chw));
            };
            let fitted =
                super::resample::resize_then_crop(&chw, channels, (h, w), shorter, (crop, crop))
                    .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
            Ok((crop, crop, fitted))
        })
        .collect::<Result<_>>()?;
    let (h, w) = (decoded[0].0, decoded[0].1);
    let mut images = Vec::with_capacity(decoded.len() * channels * h * w);
    for ((ih, iw, data), (path, _)) in decoded.into_iter().zip(&files) {
        if (ih, iw) != (h, w) {
            candle_core::bail!(
                "{}: image is {iw}x{ih}, expected {w}x{h} like {}",
                path.display(),
                files[0].0.display()
            )
        }
        images.extend(data);
    }
    let labels = files.iter().map(|(_, l)| *l).collect();
    ImageDataset::new(
        format!("{} ({})", root.display(), split.name()),
        [channels, h, w],
        classes,
        images,
        labels,
    )
}
