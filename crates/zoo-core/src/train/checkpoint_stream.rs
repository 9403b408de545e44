//! A checkpoint's model weights read from the file straight into a model's variables, a few
//! megabytes at a time (`zoo predict`, `eval`, `export`): the weights are in memory once, not
//! the file, its decoded tensors and an initialisation beside each other (3x the weights before).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Result, Tensor, Var};
use serde_json::Value;

use super::checkpoint::{
    CheckpointMeta, EMA_PREFIX, OPTIMIZER_PREFIX, check_fit, check_tensor, meta_from_header,
};
use crate::error::ReadError;
use crate::init::ParamStore;

/// Bytes read at a time: whole rows of a tensor's first axis, at least one.
const CHUNK_BYTES: usize = 8 << 20;

/// Where one stored tensor lies in the file.
struct Entry {
    dtype: DType,
    shape: Vec<usize>,
    /// Absolute byte offset of its data.
    start: u64,
}

/// A checkpoint's header: its zoo metadata and where each model tensor lies, with the file
/// still open for [`stream_weights`].
pub struct CheckpointIndex {
    pub meta: CheckpointMeta,
    entries: HashMap<String, Entry>,
    path: PathBuf,
    file: File,
}

/// Reads and checks a checkpoint's header only: the zoo metadata and every model tensor's
/// dtype, shape and place (the optimiser's and the EMA's are left out). Errors name the file.
pub fn read_index(path: &Path) -> Result<CheckpointIndex> {
    let bad = |e: String| candle_core::Error::Msg(format!("{}: {e}", path.display()));
    let file = File::open(path).map_err(|e| ReadError::from_io(path, e))?;
    let file_len = file.metadata().map_err(|e| bad(e.to_string()))?.len();
    let mut len = [0u8; 8];
    read_at(&file, 0, &mut len)
        .map_err(|_| bad("not a safetensors file: shorter than its header".into()))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > 100 << 20 || 8 + header_len > file_len {
        return Err(bad(format!(
            "not a safetensors file: header of {header_len} bytes"
        )));
    }
    let mut text = vec![0u8; header_len as usize];
    read_at(&file, 8, &mut text).map_err(|e| bad(e.to_string()))?;
    let header: HashMap<String, Value> =
        serde_json::from_slice(&text).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let metadata = header
        .get("__metadata__")
        .map(|m| serde_json::from_value::<HashMap<String, String>>(m.clone()))
        .transpose()
        .map_err(|e| bad(format!("bad metadata: {e}")))?;
    let meta = meta_from_header(metadata.as_ref(), path)?;
    let data_start = 8 + header_len;
    let mut entries = HashMap::new();
    for (name, value) in &header {
        let model_tensor = name != "__metadata__"
            && !name.starts_with(OPTIMIZER_PREFIX)
            && !name.starts_with(EMA_PREFIX);
        if model_tensor {
            let entry = entry(name, value, data_start, file_len).map_err(bad)?;
            entries.insert(name.clone(), entry);
        }
    }
    Ok(CheckpointIndex {
        meta,
        entries,
        path: path.to_path_buf(),
        file,
    })
}

/// One header entry, checked: a floating-point dtype, and data that fills its place in the file.
fn entry(
    name: &str,
    value: &Value,
    data_start: u64,
    file_len: u64,
) -> std::result::Result<Entry, String> {
    let dtype = match value["dtype"].as_str() {
        Some("F32") => DType::F32,
        Some("F16") => DType::F16,
        Some("BF16") => DType::BF16,
        Some("F64") => DType::F64,
        other => {
            let other = other.unwrap_or("without a dtype");
            return Err(format!(
                "tensor `{name}` is {other}; zoo stores floating-point tensors (f32, f16, bf16, f64)"
            ));
        }
    };
    let numbers = |key: &str| -> Option<Vec<u64>> {
        value[key].as_array()?.iter().map(Value::as_u64).collect()
    };
    let (Some(shape), Some(offsets)) = (numbers("shape"), numbers("data_offsets")) else {
        return Err(format!(
            "tensor `{name}`: no shape or data offsets in the header"
        ));
    };
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    let bytes = shape
        .iter()
        .try_fold(dtype.size_in_bytes() as u64, |n, &d| {
            n.checked_mul(d as u64)
        });
    let fits = |s: u64, e: u64| {
        e.checked_sub(s).zip(bytes).is_some_and(|(len, b)| len == b)
            && data_start.checked_add(e).is_some_and(|end| end <= file_len)
    };
    match offsets[..] {
        [s, e] if fits(s, e) => Ok(Entry {
            dtype,
            shape,
            start: data_start + s,
        }),
        _ => Err(format!(
            "tensor `{name}` {shape:?}: its data offsets {offsets:?} do not hold its {} bytes \
             inside the file",
            bytes.map_or("countless".into(), |b| b.to_string())
        )),
    }
}

/// Loads the model tensors of `index` (from the file it was read from) into the store's
/// variables, checking first that names and shapes fit (one error listing every misfit), then a
/// few megabytes at a time, each slice checked for NaN and infinities. After an error in the
/// data the store is partly filled: discard it.
pub fn stream_weights(store: &ParamStore, index: &CheckpointIndex) -> Result<()> {
    stream_weights_in(store, index, CHUNK_BYTES)
}

/// [`stream_weights`], reading `chunk_bytes` at a time (at least one row).
pub(crate) fn stream_weights_in(
    store: &ParamStore,
    index: &CheckpointIndex,
    chunk_bytes: usize,
) -> Result<()> {
    let source = index.path.display().to_string();
    let shapes = index
        .entries
        .iter()
        .map(|(name, e)| (name.clone(), e.shape.clone()))
        .collect();
    check_fit(store, &shapes, &source)?;
    for (name, var) in &store.named_tensors() {
        fill(&index.file, name, &index.entries[name], var, chunk_bytes)
            .map_err(|e| candle_core::Error::Msg(format!("{source}: {e}")))?;
    }
    Ok(())
}

/// Fills `buffer` from `file` at byte `offset`.
fn read_at(mut file: &File, offset: u64, buffer: &mut [u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buffer)
}

/// Copies one tensor's data into `var`, whole rows of its first axis at a time.
fn fill(file: &File, name: &str, entry: &Entry, var: &Var, chunk_bytes: usize) -> Result<()> {
    let (rows, row_shape) = match entry.shape.split_first() {
        Some((&rows, rest)) => (rows, rest.to_vec()),
        None => (1, Vec::new()),
    };
    let row_bytes = row_shape.iter().product::<usize>() * entry.dtype.size_in_bytes();
    let per_chunk = (chunk_bytes / row_bytes.max(1)).max(1);
    let target = var.as_tensor();
    let mut buffer = Vec::new();
    for first in (0..rows).step_by(per_chunk) {
        let count = per_chunk.min(rows - first);
        buffer.resize(count * row_bytes, 0);
        read_at(file, entry.start + (first * row_bytes) as u64, &mut buffer)
            .map_err(|e| candle_core::Error::Msg(format!("tensor `{name}`: {e}")))?;
        let shape = match entry.shape.is_empty() {
            true => Vec::new(),
            false => [&[count][..], &row_shape].concat(),
        };
        let slice = Tensor::from_raw_buffer(&buffer, entry.dtype, &shape, &Device::Cpu)?;
        check_tensor(name, &slice).map_err(|e| {
            let rows = format!("rows {first}..{} of {:?}", first + count, entry.shape);
            candle_core::Error::Msg(format!("{e} ({rows})"))
        })?;
        let slice = slice.to_dtype(target.dtype())?.to_device(target.device())?;
        match entry.shape.is_empty() {
            true => var.set(&slice)?,
            false => target.slice_set(&slice, 0, first)?,
        }
    }
    Ok(())
}
