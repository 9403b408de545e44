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

/// The largest IDX data accepted: 4 GiB (MNIST's training images are 47 MB).
pub const MAX_IDX_BYTES: usize = 1 << 32;

/// Reads an IDX file of unsigned bytes; `.gz` content (one member or several, as `gzip`
/// writes concatenated files) is recognised by its magic bytes and inflated no further than
/// the size its header declares (plus one byte, to tell an oversized file).
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let raw = read_file(path)?;
    let named = |e: String| candle_core::Error::Msg(format!("{}: {e}", path.display()));
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        inflate_capped(flate2::read::MultiGzDecoder::new(raw.as_slice())).map_err(named)?
    } else {
        raw
    };
    parse_idx(&bytes).map_err(named)
}

/// The header and at most the declared data size + 1 bytes of an IDX stream.
fn inflate_capped(mut reader: impl Read) -> std::result::Result<Vec<u8>, String> {
    let corrupt = |e: std::io::Error| format!("corrupt gzip data: {e}");
    let mut out = vec![0u8; 4];
    // A stream too short for the header is left to parse_idx's message.
    let mut got = 0;
    while got < 4 {
        match reader.read(&mut out[got..]).map_err(corrupt)? {
            0 => {
                out.truncate(got);
                return Ok(out);
            }
            n => got += n,
        }
    }
    let ndims = out[3] as usize;
    let mut dims = vec![0u8; 4 * ndims];
    let n = read_up_to(&mut reader, &mut dims).map_err(corrupt)?;
    out.extend_from_slice(&dims[..n]);
    if n < dims.len() {
        return Ok(out);
    }
    let sizes: Vec<usize> = dims
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = declared_size(&sizes)?;
    reader
        .take(expected as u64 + 1)
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    Ok(out)
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// The byte count that dimensions declare, checked against overflow and [`MAX_IDX_BYTES`].
fn declared_size(dims: &[usize]) -> std::result::Result<usize, String> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| {
            format!(
                "IDX header declares dimensions {dims:?}: more than the {MAX_IDX_BYTES} bytes \
                 allowed"
            )
        })
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
    let expected = declared_size(&dims)?;
    if expected == 0 {
        return Err(format!(
            "IDX header declares dimensions {dims:?}: an empty array"
        ));
    }
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
