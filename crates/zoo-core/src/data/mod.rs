//! The data side: datasets held as u8 images in memory, read from the standard on-disk
//! formats (CIFAR-10 binary batches, IDX raw or gzip, image folders), a seeded loader that
//! prepares batches in the background, and the transforms applied on the training device.
//!
//! Every source gives images in one orientation, `(N, C, H, W)` row-major, as u8. Every
//! malformed file is an error naming the file and what was expected.

pub mod augment;
pub mod cifar;
mod dataset;
pub mod folder;
pub mod hub;
pub mod idx;
pub mod loader;
pub mod resample;
pub mod resolve;
pub mod transforms;

pub use dataset::Dataset;

#[cfg(test)]
mod tests;

use candle_core::Result;

/// Which part of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    pub fn name(&self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Images as u8 `(N, C, H, W)` with one label each, and the class names.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDataset {
    /// Where the data came from (shown in reports).
    pub source: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub classes: Vec<String>,
    images: Vec<u8>,
    labels: Vec<u8>,
}

impl ImageDataset {
    /// Checks that sizes agree and every label names a class.
    pub fn new(
        source: impl Into<String>,
        [channels, height, width]: [usize; 3],
        classes: Vec<String>,
        images: Vec<u8>,
        labels: Vec<u8>,
    ) -> Result<Self> {
        let source = source.into();
        let per_image = channels * height * width;
        if per_image == 0 {
            candle_core::bail!("{source}: empty image size {channels}x{height}x{width}")
        }
        if images.len() != labels.len() * per_image {
            candle_core::bail!(
                "{source}: {} labels but {} bytes of images ({} images of {channels}x{height}x{width})",
                labels.len(),
                images.len(),
                images.len() as f64 / per_image as f64
            )
        }
        if let Some((i, &bad)) = labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= classes.len())
        {
            candle_core::bail!(
                "{source}: label {bad} of sample {i} is out of range (the dataset has {} classes)",
                classes.len()
            )
        }
        Ok(Self {
            source,
            channels,
            height,
            width,
            classes,
            images,
            labels,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes of one image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Image `i` as `(C, H, W)` bytes.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
    }

    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    pub fn labels(&self) -> &[u8] {
        &self.labels
    }

    /// How many samples of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The first `n` samples of every class (a small, balanced sample).
    pub fn per_class_prefix(&self, n: usize) -> Self {
        let mut taken = vec![0; self.classes.len()];
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for i in 0..self.len() {
            let l = self.labels[i] as usize;
            if taken[l] < n {
                taken[l] += 1;
                images.extend_from_slice(self.image(i));
                labels.push(self.labels[i]);
            }
        }
        Self {
            source: format!("{} (first {n} per class)", self.source),
            images,
            labels,
            ..self.clone_meta()
        }
    }

    fn clone_meta(&self) -> Self {
        Self {
            source: self.source.clone(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            classes: self.classes.clone(),
            images: Vec::new(),
            labels: Vec::new(),
        }
    }
}

/// CIFAR-10's class names, in label order.
pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// `"0"` ... `"9"`.
pub fn digit_classes() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

/// The 1000 ImageNet-1k class names in index order, as torchvision's weights give them
/// (`weights.meta["categories"]`, torchvision 0.29).
pub fn imagenet_classes() -> Vec<String> {
    include_str!("imagenet_classes.txt")
        .lines()
        .map(str::to_string)
        .collect()
}

pub(crate) fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    Ok(crate::error::read_bytes(path)?)
}
