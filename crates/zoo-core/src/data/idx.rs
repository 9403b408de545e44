//! IDX files (MNIST, Fashion-MNIST), raw or gzip-compressed, with every header checked.

use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::Result;

use super::{ImageDataset, Split, read_file};

/// An unsigned-byte IDX array: its dimensions and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file of unsigned bytes; `.gz` content is recognised by its magic bytes.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = read_file(path)?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| {
                candle_core::Error::Msg(format!("{}: corrupt gzip data: {e}", path.display()))
            })?;
        out
    } else {
        raw
    };
    parse_idx(&bytes).map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))
}

/// Parses IDX bytes (`00 00 08 <ndims>`, big-endian u32 sizes, then the data).
pub fn parse_idx(bytes: &[u8]) -> std::result::Result<IdxArray, String> {
    if bytes.len() < 4 {
        return Err(format!(
            "not an IDX file: {} bytes, a header needs at least 4",
            bytes.len()
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!(
            "not an IDX file: magic number starts {:02x} {:02x}, expected 00 00",
            bytes[0], bytes[1]
        ));
    }
    if bytes[2] != 0x08 {
        return Err(format!(
            "IDX type code 0x{:02x} is not unsigned byte (0x08)",
            bytes[2]
        ));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if ndims == 0 || bytes.len() < header {
        return Err(format!(
            "truncated IDX header: {ndims} dimensions need {header} bytes, file has {}",
            bytes.len()
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let expected: usize = dims.iter().product();
    let found = bytes.len() - header;
    if found != expected {
        return Err(format!(
            "{} data: header declares dimensions {dims:?} = {expected} bytes, file holds {found}",
            if found < expected {
                "truncated"
            } else {
                "oversized"
            }
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// The standard file names of one split, without `.gz`.
pub fn idx_file_names(split: Split) -> [&'static str; 2] {
    match split {
        Split::Train => ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"],
        Split::Test => ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
    }
}

/// The file `dir/name` or `dir/name.gz`, whichever exists.
pub fn find_raw_or_gz(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

/// One split of an MNIST-format dataset in `dir` (raw or `.gz` files, standard names).
pub fn load_idx_split(dir: &Path, split: Split, classes: Vec<String>) -> Result<ImageDataset> {
    let [images_name, labels_name] = idx_file_names(split);
    let find = |name: &str| {
        find_raw_or_gz(dir, name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: missing {name} (or {name}.gz) for the {} split",
                dir.display(),
                split.name()
            ))
        })
    };
    let (images_path, labels_path) = (find(images_name)?, find(labels_name)?);
    let images = read_idx(&images_path)?;
    let labels = read_idx(&labels_path)?;
    let [n, h, w] = images.dims[..] else {
        candle_core::bail!(
            "{}: expected 3 dimensions (images, rows, columns), found {:?}",
            images_path.display(),
            images.dims
        )
    };
    if labels.dims != [n] {
        candle_core::bail!(
            "{}: {} labels for {n} images in {} (expected dimensions [{n}])",
            labels_path.display(),
            labels.dims.first().copied().unwrap_or(0),
            images_path.display()
        )
    }
    ImageDataset::new(
        format!("{} ({})", dir.display(), split.name()),
        [1, h, w],
        classes,
        images.data,
        labels.data,
    )
    .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", labels_path.display())))
}

/// Writes IDX bytes (used by tests and tools to make fixtures).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}
