//! PyTorch state dicts as they are published: `torch.save`'s zip format (PyTorch >= 1.6),
//! its legacy stream format (older files, e.g. torchvision's first ResNet URLs, read here by
//! parsing the pickles with candle's pickle machine), and `.safetensors`. The format is told
//! by the file's first bytes, not its name.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use candle_core::pickle::{Object, Stack, TensorInfo};
use candle_core::{DType, Device, Tensor};

/// The formats a state-dict file comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateDictFormat {
    /// `torch.save` since PyTorch 1.6: a zip of `data.pkl` and one file per storage.
    TorchZip,
    /// `torch.save(..., _use_new_zipfile_serialization=False)` and every file before 1.6:
    /// magic number, protocol, system info, the pickled dict, storage keys, raw storages.
    TorchLegacy,
    /// The tar archives of PyTorch 0.1 to 0.3 (refused: see [`read_state_dict`]).
    TorchTar,
    /// Hugging Face safetensors.
    Safetensors,
}

/// The pickle `torch.save` writes first in the legacy format: protocol 2, the 10-byte long
/// `0x1950a86a20f9469cfc6c`, STOP.
const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];

/// The format of `path`, from its first bytes.
pub fn sniff_format(path: &Path) -> Result<StateDictFormat> {
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path)
        .with_context(|| format!("opening {}", path.display()))?
        .take(512)
        .read_to_end(&mut head)
        .with_context(|| format!("reading {}", path.display()))?;
    if head.starts_with(b"PK\x03\x04") {
        Ok(StateDictFormat::TorchZip)
    } else if head.starts_with(&LEGACY_MAGIC) {
        Ok(StateDictFormat::TorchLegacy)
    } else if head.get(257..262) == Some(b"ustar") {
        Ok(StateDictFormat::TorchTar)
    } else if head.len() >= 9 && head[8] == b'{' {
        Ok(StateDictFormat::Safetensors)
    } else {
        bail!(
            "{}: not a PyTorch file (zip or legacy torch.save) nor safetensors",
            path.display()
        )
    }
}

/// Every tensor of the state dict in `path`, under the file's own keys; an error naming the
/// file for a malformed one, a file without tensors, or the PyTorch 0.1-0.3 tar format (no
/// published torchvision file uses it; `torch.save(torch.load(f), g)` converts one).
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let tensors = match sniff_format(path)? {
        StateDictFormat::Safetensors => candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("reading {} as safetensors", path.display()))?
            .into_iter()
            .collect(),
        StateDictFormat::TorchZip => guarded(path, || candle_core::pickle::read_all(path))?,
        StateDictFormat::TorchLegacy => guarded(path, || read_legacy(path))?,
        StateDictFormat::TorchTar => bail!(
            "{}: the tar format of PyTorch 0.1-0.3 is not read; re-save it with \
             `torch.save(torch.load(f), g)`",
            path.display()
        ),
    };
    ensure!(
        !tensors.is_empty(),
        "{}: no tensors (expected a state dict, as `torch.save(model.state_dict(), f)` writes)",
        path.display()
    );
    Ok(tensors)
}

/// Runs a reader of untrusted bytes: its errors and panics become one error naming the file.
fn guarded<T>(
    path: &Path,
    read: impl FnOnce() -> candle_core::Result<T> + std::panic::UnwindSafe,
) -> Result<T> {
    std::panic::catch_unwind(read)
        .map_err(|_| {
            anyhow::anyhow!(
                "{}: malformed PyTorch file (its reader failed on the data)",
                path.display()
            )
        })?
        .with_context(|| format!("reading {} as a PyTorch state dict", path.display()))
}

/// One pickle from the stream.
fn read_pickle<R: BufRead>(reader: &mut R) -> candle_core::Result<Object> {
    let mut stack = Stack::empty();
    stack.read_loop(reader)?;
    stack.finalize()
}

/// The legacy stream format (torch/serialization.py `_legacy_save`).
fn read_legacy(path: &Path) -> candle_core::Result<Vec<(String, Tensor)>> {
    let mut reader = BufReader::new(std::fs::File::open(path)?);
    let mut magic = [0u8; LEGACY_MAGIC.len()];
    reader.read_exact(&mut magic)?;
    let protocol = read_pickle(&mut reader)?;
    if !matches!(protocol, Object::Int(1001)) {
        candle_core::bail!("legacy protocol {protocol:?}, expected 1001")
    }
    let _sys_info = read_pickle(&mut reader)?;
    let Object::Dict(entries) = read_pickle(&mut reader)? else {
        candle_core::bail!("the pickled object is not a dict (a state dict expected)")
    };
    let infos: Vec<TensorInfo> = entries
        .into_iter()
        .filter_map(|(name, value)| value.into_tensor_info(name, Path::new("")).transpose())
        .collect::<candle_core::Result<_>>()?;
    let Object::List(keys) = read_pickle(&mut reader)? else {
        candle_core::bail!("no storage key list after the pickled dict")
    };
    let storages = read_storages(&mut reader, keys, &infos)?;
    infos
        .iter()
        .map(|info| Ok((info.name.clone(), tensor_of(info, &storages)?)))
        .collect()
}

/// The storage key a tensor refers to (the zip-format reader's path, here `/key`).
fn storage_key(info: &TensorInfo) -> &str {
    info.path.trim_start_matches('/')
}

/// The raw storages that follow the key list: per key, its element count (i64, little
/// endian) and its bytes; the element size comes from the tensors that use it.
fn read_storages<R: Read>(
    reader: &mut R,
    keys: Vec<Object>,
    infos: &[TensorInfo],
) -> candle_core::Result<HashMap<String, (DType, Vec<u8>)>> {
    let dtypes: HashMap<&str, DType> = infos.iter().map(|i| (storage_key(i), i.dtype)).collect();
    let mut storages = HashMap::new();
    for key in keys {
        let key = String::try_from(key)
            .map_err(|k| candle_core::Error::Msg(format!("storage key {k:?}")))?;
        let mut count = [0u8; 8];
        reader.read_exact(&mut count)?;
        let count = i64::from_le_bytes(count);
        let Some(&dtype) = dtypes.get(key.as_str()) else {
            candle_core::bail!("storage `{key}` is used by no tensor of the dict")
        };
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(dtype.size_in_bytes()))
            .filter(|&n| n <= 1 << 36)
            .ok_or_else(|| candle_core::Error::Msg(format!("storage `{key}`: {count} elements")))?;
        let mut bytes = Vec::new();
        reader.take(len as u64).read_to_end(&mut bytes)?;
        if bytes.len() != len {
            candle_core::bail!(
                "storage `{key}`: the file ends after {} of {len} bytes",
                bytes.len()
            )
        }
        storages.insert(key, (dtype, bytes));
    }
    Ok(storages)
}

/// A tensor cut from its storage by its offset and shape (contiguous tensors only, as
/// `state_dict()` gives them).
fn tensor_of(
    info: &TensorInfo,
    storages: &HashMap<String, (DType, Vec<u8>)>,
) -> candle_core::Result<Tensor> {
    let key = storage_key(info);
    let Some((dtype, bytes)) = storages.get(key) else {
        candle_core::bail!("`{}`: storage `{key}` is not in the file", info.name)
    };
    if !info.layout.is_contiguous() {
        candle_core::bail!("`{}`: a non-contiguous tensor {:?}", info.name, info.layout)
    }
    let size = dtype.size_in_bytes();
    let start = info.layout.start_offset();
    let end = start + info.layout.shape().elem_count() * size;
    if end > bytes.len() {
        candle_core::bail!(
            "`{}`: {:?} needs bytes {start}..{end} of a {}-byte storage",
            info.name,
            info.layout.dims(),
            bytes.len()
        )
    }
    Tensor::from_raw_buffer(&bytes[start..end], *dtype, info.layout.dims(), &Device::Cpu)
}
