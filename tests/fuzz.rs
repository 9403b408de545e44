//! Seeded mutation tests of every reader: IDX (raw and gzip), CIFAR-10 binary batches, image
//! folders, zoo checkpoints (safetensors with metadata) and PyTorch `.pt` state dicts. Each
//! valid file is truncated, bit-flipped and given extreme header fields; every read must end in
//! a value or in an error that names the file, never in a panic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use candle_core::{DType, Device};
use zoo_core::data::Split;
use zoo_core::data::cifar::{encode_cifar_batch, read_cifar_batch};
use zoo_core::data::folder::load_image_folder;
use zoo_core::data::idx::{encode_idx, read_idx};
use zoo_core::data::transforms::InputTransform;
use zoo_core::init::{InitScheme, ParamStore};
use zoo_core::rng::ZooRng;
use zoo_core::train::checkpoint::{CheckpointMeta, RunInfo, load_checkpoint, save_checkpoint};
use zoo_core::train::checkpoint_stream::{read_index, stream_weights};
use zoo_core::{InputSpec, candle_nn};

/// Mutations of each valid file.
const CASES: usize = 48;

fn scratch(name: &str) -> zoo_core::testing::ScratchDir {
    zoo_core::testing::scratch_dir(&format!("fuzz-{name}"))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// The `case`-th mutation of `valid`: a truncation, 1-8 bit flips, or a 4-byte field near the
/// start set to an extreme (0, 1, 0x7fffffff, 0xffffffff, in either byte order).
fn mutate(valid: &[u8], rng: &mut ZooRng, case: usize) -> (String, Vec<u8>) {
    let mut bytes = valid.to_vec();
    match case % 3 {
        0 => {
            let len = rng.below(valid.len() as u64) as usize;
            bytes.truncate(len);
            (format!("truncated to {len}"), bytes)
        }
        1 => {
            let flips = 1 + rng.below(8) as usize;
            for _ in 0..flips {
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
            (format!("{flips} bit flips"), bytes)
        }
        _ => {
            let span = bytes.len().saturating_sub(4).clamp(1, 64);
            let at = rng.below(span as u64) as usize;
            let extremes = [0u32, 1, 0x7fff_ffff, 0xffff_ffff];
            let v = extremes[rng.below(4) as usize];
            let field = if rng.below(2) == 0 {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            let end = (at + 4).min(bytes.len());
            bytes[at..end].copy_from_slice(&field[..end - at]);
            (format!("field at {at} = {v:#x}"), bytes)
        }
    }
}

/// Writes every mutation of `valid` to `path` and reads it with `read`; `Ok` is allowed (a
/// flipped pixel is still an image), an error must name `named`, a panic fails the test.
fn fuzz<T>(
    label: &str,
    valid: &[u8],
    path: &Path,
    named: &Path,
    seed: u64,
    read: impl Fn() -> Result<T, String>,
) {
    let mut rng = ZooRng::new(seed);
    let mut errors = 0;
    for case in 0..CASES {
        let (what, bytes) = mutate(valid, &mut rng, case);
        std::fs::write(path, &bytes).unwrap();
        match catch_unwind(AssertUnwindSafe(&read)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                errors += 1;
                assert!(
                    e.contains(&named.display().to_string()),
                    "{label}, {what}: the error does not name {}: {e}",
                    named.display()
                );
            }
            Err(_) => panic!("{label}, {what}: the reader panicked"),
        }
    }
    // The mutations must exercise the error paths, not only produce other valid files.
    assert!(
        errors >= CASES / 3,
        "{label}: only {errors} of {CASES} mutations were errors"
    );
}

#[test]
fn idx_files_raw_and_gzip() {
    let dir = scratch("idx");
    let data: Vec<u8> = (0..5 * 28 * 28).map(|i| (i * 7 % 251) as u8).collect();
    let valid = encode_idx(&[5, 28, 28], &data);
    let path = dir.join("train-images-idx3-ubyte");
    fuzz("IDX", &valid, &path, &path, 1, || {
        read_idx(&path).map_err(|e| e.to_string())
    });
    let gz = dir.join("train-images-idx3-ubyte.gz");
    fuzz("IDX gzip", &gzip(&valid), &gz, &gz, 2, || {
        read_idx(&gz).map_err(|e| e.to_string())
    });
}

#[test]
fn cifar_binary_batches() {
    let dir = scratch("cifar");
    let images: Vec<u8> = (0..4 * 3072).map(|i| (i % 256) as u8).collect();
    let valid = encode_cifar_batch(&images, &[0, 3, 9, 5]);
    let path = dir.join("data_batch_1.bin");
    fuzz("CIFAR batch", &valid, &path, &path, 3, || {
        read_cifar_batch(&path).map_err(|e| e.to_string())
    });
}

#[test]
fn image_folders() {
    let root = scratch("folder");
    let mut png = Vec::new();
    let img = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8 * 30, y as u8 * 30, 7]));
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    for class in ["cat", "dog"] {
        let dir = root.join("train").join(class);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("0.png"), &png).unwrap();
    }
    let path = root.join("train/dog/0.png");
    fuzz("image folder", &png, &path, &path, 4, || {
        load_image_folder(&root, Split::Train, 3).map_err(|e| e.to_string())
    });
}

#[test]
fn zoo_checkpoints() {
    let dir = scratch("checkpoint");
    let store = ParamStore::new(1, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
    let vb = store.var_builder();
    vb.get_with_hints((4, 3, 3, 3), "0.weight", candle_nn::Init::Const(0.5))
        .unwrap();
    vb.get_with_hints(4, "0.bias", candle_nn::Init::Const(0.1))
        .unwrap();
    let meta = CheckpointMeta::new(RunInfo::new(
        "densenet",
        InputSpec::square(3, 32),
        (0..10).map(|i| format!("class{i}")).collect(),
        InputTransform::notebook(3, 32),
        String::new(),
        1,
    ));
    let path = dir.join("last.safetensors");
    save_checkpoint(&path, &store, None, None, &meta).unwrap();
    let valid = std::fs::read(&path).unwrap();
    fuzz("checkpoint", &valid, &path, &path, 5, || {
        load_checkpoint(&path, &Device::Cpu).map_err(|e| e.to_string())
    });
    // The streamed reading of `zoo predict`, `eval` and `export`: into a model of these shapes.
    let zeroed = ParamStore::new(1, InitScheme::XavierUniform, DType::F32, &Device::Cpu);
    let vb = zeroed.zeroed_var_builder();
    vb.get((4, 3, 3, 3), "0.weight").unwrap();
    vb.get(4, "0.bias").unwrap();
    fuzz("streamed checkpoint", &valid, &path, &path, 7, || {
        read_index(&path)
            .and_then(|index| stream_weights(&zeroed, &index))
            .map_err(|e| e.to_string())
    });
}

#[test]
fn pytorch_state_dicts() {
    let dir = scratch("pt");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/cifar_densenet.pt");
    let valid = std::fs::read(&fixture).unwrap();
    let path = dir.join("cifar_densenet.pt");
    fuzz("PyTorch .pt", &valid, &path, &path, 6, || {
        zoo_cli::state_dict::read_state_dict(&path).map_err(|e| format!("{e:#}"))
    });
}
