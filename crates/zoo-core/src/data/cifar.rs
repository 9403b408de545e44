//! CIFAR-10 binary batches: records of 1 label byte and 3,072 pixel bytes (CHW).

use std::path::Path;

use candle_core::Result;

use super::{CIFAR10_CLASSES, ImageDataset, Split, names, read_file};

const RECORD: usize = 1 + 3 * 32 * 32;

/// The batch files of one split.
pub fn batch_file_names(split: Split) -> Vec<String> {
    match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".to_string()],
    }
}

/// Reads one batch file into (images CHW, labels).
pub fn read_cifar_batch(path: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let bytes = read_file(path)?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        candle_core::bail!(
            "{}: {} bytes is not a whole number of CIFAR-10 records ({RECORD} bytes: 1 label + 3072 pixels); \
             the file is truncated or not a CIFAR-10 binary batch",
            path.display(),
            bytes.len()
        )
    }
    let n = bytes.len() / RECORD;
    let mut images = Vec::with_capacity(n * (RECORD - 1));
    let mut labels = Vec::with_capacity(n);
    for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
        if record[0] >= 10 {
            candle_core::bail!(
                "{}: record {i} has label {}, expected 0..=9",
                path.display(),
                record[0]
            )
        }
        labels.push(record[0]);
        images.extend_from_slice(&record[1..]);
    }
    Ok((images, labels))
}

/// One split from a `cifar-10-batches-bin` folder.
pub fn load_cifar10_bin(dir: &Path, split: Split) -> Result<ImageDataset> {
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for name in batch_file_names(split) {
        let path = dir.join(&name);
        if !path.is_file() {
            candle_core::bail!(
                "{}: missing {name} for the {} split (expected {})",
                dir.display(),
                split.name(),
                batch_file_names(split).join(", ")
            )
        }
        let (i, l) = read_cifar_batch(&path)?;
        images.extend(i);
        labels.extend(l);
    }
    ImageDataset::new(
        format!("{} ({})", dir.display(), split.name()),
        [3, 32, 32],
        names(&CIFAR10_CLASSES),
        images,
        labels,
    )
}

/// Encodes records in the binary batch format (for fixtures).
pub fn encode_cifar_batch(images: &[u8], labels: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(labels.len() * RECORD);
    for (i, &l) in labels.iter().enumerate() {
        out.push(l);
        out.extend_from_slice(&images[i * (RECORD - 1)..(i + 1) * (RECORD - 1)]);
    }
    out
}
