//! Tests of the data side: fixtures written by the tests in every format, checked pixel for
//! pixel; malformed files; the loader's determinism; transforms against PyTorch; the real
//! datasets from `../shared/data` when present.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::augment::Augment;
use super::cifar::{encode_cifar_batch, load_cifar10_bin};
use super::folder::load_image_folder;
use super::idx::{encode_idx, load_idx_split, read_idx};
use super::loader::{Loader, LoaderConfig};
use super::resolve::load_split;
use super::transforms::{normalize, resize_bilinear};
use super::{ImageDataset, Split, digit_classes};

fn fixture_dir(name: &str) -> crate::testing::ScratchDir {
    crate::testing::scratch_dir(&format!("test-{name}"))
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Pixel `p` of image `i`, distinct enough to catch transposes and offsets.
fn pixel(i: usize, p: usize) -> u8 {
    ((i * 31 + p * 7 + p / 32) % 251) as u8
}

fn mnist_fixture(dir: &Path, n: usize, gz: bool) -> (Vec<u8>, Vec<u8>) {
    let images: Vec<u8> = (0..n)
        .flat_map(|i| (0..28 * 28).map(move |p| pixel(i, p)))
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i * 3 % 10) as u8).collect();
    for (name, bytes) in [
        ("train-images-idx3-ubyte", encode_idx(&[n, 28, 28], &images)),
        ("train-labels-idx1-ubyte", encode_idx(&[n], &labels)),
        ("t10k-images-idx3-ubyte", encode_idx(&[n, 28, 28], &images)),
        ("t10k-labels-idx1-ubyte", encode_idx(&[n], &labels)),
    ] {
        if gz {
            write(&dir.join(format!("{name}.gz")), &gzip(&bytes));
        } else {
            write(&dir.join(name), &bytes);
        }
    }
    (images, labels)
}

#[test]
fn idx_raw_and_gzip_load_pixel_for_pixel() {
    for gz in [false, true] {
        let dir = fixture_dir(&format!("idx-{gz}"));
        let (images, labels) = mnist_fixture(&dir, 5, gz);
        let ds = load_idx_split(&dir, Split::Train, digit_classes()).unwrap();
        assert_eq!((ds.len(), ds.channels, ds.height, ds.width), (5, 1, 28, 28));
        assert_eq!(ds.labels(), labels.as_slice());
        for i in 0..5 {
            assert_eq!(ds.image(i), &images[i * 784..(i + 1) * 784]);
        }
        // Row-major: pixel (row 1, col 0) of image 2 is byte 28 of that image.
        assert_eq!(ds.image(2)[28], pixel(2, 28));
    }
}

#[test]
fn malformed_idx_files_are_named_errors() {
    let dir = fixture_dir("idx-bad");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            encode_idx(&[3, 28, 28], &[0; 100]),
            "truncated data: header declares dimensions [3, 28, 28] = 2352 bytes, file holds 100",
        ),
        (
            "magic",
            vec![1, 2, 8, 1, 0, 0, 0, 0],
            "magic number starts 01 02, expected 00 00",
        ),
        (
            "type",
            vec![0, 0, 0x0d, 1, 0, 0, 0, 0],
            "type code 0x0d is not unsigned byte",
        ),
        ("header", vec![0, 0, 8, 3, 0, 0], "truncated IDX header"),
    ];
    for (name, bytes, expected) in cases {
        let path = dir.join(name);
        write(&path, &bytes);
        let err = read_idx(&path).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains(expected),
            "{name}: {err}"
        );
    }
    // Dimensions whose product wraps around u64 (2^32 * 2^32 = 0 mod 2^64), or is too large.
    for (name, dims) in [
        ("wraps", [0x1_0000u32; 4]),
        ("huge", [1, 0xffff_ffff, 0xffff, 2]),
    ] {
        let mut bytes = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(&[0; 16]);
        for (file, content) in [
            (name.to_string(), bytes.clone()),
            (format!("{name}.gz"), gzip(&bytes)),
        ] {
            let path = dir.join(&file);
            write(&path, &content);
            let err = read_idx(&path).unwrap_err().to_string();
            assert!(
                err.contains(&path.display().to_string())
                    && (err.contains("bytes allowed") || err.contains("an empty array")),
                "{file}: {err}"
            );
        }
    }
    // A gzip stream that inflates far beyond its header's size stops one byte past it.
    let mut bomb = encode_idx(&[4], &[1, 2, 3, 4]);
    bomb.resize(64 << 20, 0);
    let path = dir.join("bomb.gz");
    write(&path, &gzip(&bomb));
    let err = read_idx(&path).unwrap_err().to_string();
    assert!(
        err.contains("oversized data: header declares dimensions [4] = 4 bytes, file holds 5"),
        "{err}"
    );
    // A valid multi-member gzip file (two gzip streams concatenated, as `cat a.gz b.gz`).
    let whole = encode_idx(&[6], &[9, 8, 7, 6, 5, 4]);
    let mut two = gzip(&whole[..7]);
    two.extend_from_slice(&gzip(&whole[7..]));
    let path = dir.join("members.gz");
    write(&path, &two);
    assert_eq!(read_idx(&path).unwrap().data, vec![9, 8, 7, 6, 5, 4]);

    // Broken gzip stream.
    let path = dir.join("broken.gz");
    write(&path, &gzip(&encode_idx(&[2], &[1, 2]))[..12]);
    assert!(
        read_idx(&path)
            .unwrap_err()
            .to_string()
            .contains("corrupt gzip data")
    );

    // Image/label count mismatch and labels out of range.
    let split = fixture_dir("idx-mismatch");
    write(
        &split.join("train-images-idx3-ubyte"),
        &encode_idx(&[2, 2, 2], &[0; 8]),
    );
    write(
        &split.join("train-labels-idx1-ubyte"),
        &encode_idx(&[3], &[0, 1, 2]),
    );
    let err = load_idx_split(&split, Split::Train, digit_classes())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train-labels-idx1-ubyte") && err.contains("3 labels for 2 images"),
        "{err}"
    );
    write(
        &split.join("train-labels-idx1-ubyte"),
        &encode_idx(&[2], &[0, 12]),
    );
    let err = load_idx_split(&split, Split::Train, digit_classes())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("label 12 of sample 1 is out of range (the dataset has 10 classes)"),
        "{err}"
    );
    // A missing split names the file it wanted.
    let err = load_idx_split(&split, Split::Test, digit_classes())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "missing t10k-images-idx3-ubyte (or t10k-images-idx3-ubyte.gz) for the test split"
        ),
        "{err}"
    );
}

/// CIFAR-10 fixtures: `per_batch` records in each of the six batch files, and the same images
/// as PNG class folders.
fn cifar_fixture(root: &Path, per_batch: usize) -> ImageDataset {
    let bin = root.join("cifar10/cifar-10-batches-bin");
    let mut all_images = Vec::new();
    let mut all_labels = Vec::new();
    for (b, name) in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ]
    .iter()
    .enumerate()
    {
        let ids: Vec<usize> = (0..per_batch).map(|i| b * per_batch + i).collect();
        let images: Vec<u8> = ids
            .iter()
            .flat_map(|&i| (0..3072).map(move |p| pixel(i, p)))
            .collect();
        let labels: Vec<u8> = ids.iter().map(|&i| (i % 10) as u8).collect();
        write(&bin.join(name), &encode_cifar_batch(&images, &labels));
        if b < 5 {
            all_images.extend(images);
            all_labels.extend(labels);
        }
    }
    ImageDataset::new(
        "fixture",
        [3, 32, 32],
        super::names(&super::CIFAR10_CLASSES),
        all_images,
        all_labels,
    )
    .unwrap()
}

fn write_png_folder(root: &Path, split: &str, ds: &ImageDataset) {
    for i in 0..ds.len() {
        let class = &ds.classes[ds.label(i) as usize];
        let chw = ds.image(i);
        let (h, w) = (ds.height, ds.width);
        let mut hwc = vec![0u8; chw.len()];
        for c in 0..3 {
            for p in 0..h * w {
                hwc[p * 3 + c] = chw[c * h * w + p];
            }
        }
        let img = image::RgbImage::from_raw(w as u32, h as u32, hwc).unwrap();
        let path = root.join(split).join(class).join(format!("{i:04}.png"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        img.save(&path).unwrap();
    }
}

#[test]
fn cifar_binary_and_image_folder_give_the_same_pixels() {
    let root = fixture_dir("cifar");
    let expected = cifar_fixture(&root, 4);
    let bin = load_split(&root, &crate::data::Dataset::Cifar10, Split::Train).unwrap();
    assert_eq!(bin.len(), 20);
    assert_eq!(bin.class_counts(), vec![2; 10]);
    for i in 0..20 {
        assert_eq!(bin.image(i), expected.image(i), "image {i}");
        assert_eq!(bin.label(i), expected.label(i));
    }
    assert_eq!(
        load_split(&root, &crate::data::Dataset::Cifar10, Split::Test)
            .unwrap()
            .len(),
        4
    );

    // The same images as PNG folders in another root: class folders sort by name, files by name.
    let folder_root = fixture_dir("cifar-folder");
    write_png_folder(&folder_root.join("cifar10"), "train", &expected);
    let folder = load_split(&folder_root, &crate::data::Dataset::Cifar10, Split::Train).unwrap();
    assert_eq!(folder.classes, expected.classes);
    // Folder order is by class, then file name: compare as sets of (label, pixels).
    let mut from_folder: Vec<(u8, Vec<u8>)> = (0..folder.len())
        .map(|i| (folder.label(i), folder.image(i).to_vec()))
        .collect();
    let mut from_bin: Vec<(u8, Vec<u8>)> = (0..bin.len())
        .map(|i| (bin.label(i), bin.image(i).to_vec()))
        .collect();
    from_folder.sort();
    from_bin.sort();
    assert_eq!(from_folder, from_bin, "one orientation for every source");
}

#[test]
fn splits_with_different_classes_are_refused_before_training() {
    use super::resolve::load_dataset;
    let root = fixture_dir("classes");
    let png = |path: &Path| {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::RgbImage::from_pixel(4, 4, image::Rgb([9, 9, 9]))
            .save(path)
            .unwrap();
    };
    for class in ["cat", "dog", "emu"] {
        png(&root.join(format!("pets/train/{class}/0.png")));
    }
    // The test split lacks `dog` (its labels would shift by one) and has an extra `fox`.
    for class in ["cat", "emu", "fox"] {
        png(&root.join(format!("pets/test/{class}/0.png")));
    }
    let err = load_dataset(&root, &crate::data::Dataset::parse("pets").unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("only in pets under")
            && err.contains("[\"dog\"]")
            && err.contains("[\"fox\"]"),
        "{err}"
    );
    std::fs::remove_dir_all(root.join("pets/test/fox")).unwrap();
    png(&root.join("pets/test/dog/0.png"));
    let (train, test) = load_dataset(&root, &crate::data::Dataset::parse("pets").unwrap()).unwrap();
    assert_eq!(train.classes, test.classes);
}

#[test]
fn malformed_cifar_and_folders_are_named_errors() {
    let root = fixture_dir("cifar-bad");
    cifar_fixture(&root, 2);
    let bin = root.join("cifar10/cifar-10-batches-bin");
    let batch = bin.join("data_batch_3.bin");
    let bytes = std::fs::read(&batch).unwrap();
    write(&batch, &bytes[..bytes.len() - 5]);
    let err = load_cifar10_bin(&bin, Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data_batch_3.bin") && err.contains("not a whole number of CIFAR-10 records"),
        "{err}"
    );
    let mut bad_label = bytes.clone();
    bad_label[3073] = 10;
    write(&batch, &bad_label);
    let err = load_cifar10_bin(&bin, Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data_batch_3.bin: record 1 has label 10, expected 0..=9"),
        "{err}"
    );
    std::fs::remove_file(&batch).unwrap();
    let err = load_cifar10_bin(&bin, Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing data_batch_3.bin for the train split"),
        "{err}"
    );

    let empty = fixture_dir("cifar-none");
    let err = load_split(&empty, &crate::data::Dataset::Cifar10, Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cifar-10-batches-bin/{data_batch_1..5.bin,test_batch.bin}"),
        "{err}"
    );
    let err = load_split(&empty, &crate::data::Dataset::Mnist, Split::Train)
        .unwrap_err()
        .to_string();
    assert!(err.contains("put the four IDX files there"), "{err}");

    // Image folders: an empty class, an unreadable image, a missing split, mixed sizes.
    let folder = fixture_dir("folder-bad");
    std::fs::create_dir_all(folder.join("train/cat")).unwrap();
    std::fs::create_dir_all(folder.join("train/dog")).unwrap();
    image::GrayImage::new(4, 4)
        .save(folder.join("train/cat/a.png"))
        .unwrap();
    let err = load_image_folder(&folder, Split::Train, 3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("train/dog: empty class folder"), "{err}");
    write(&folder.join("train/dog/b.jpg"), b"not a jpeg");
    let err = load_image_folder(&folder, Split::Train, 3)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train/dog/b.jpg: cannot decode image"),
        "{err}"
    );
    image::GrayImage::new(5, 4)
        .save(folder.join("train/dog/b.jpg"))
        .unwrap();
    let err = load_image_folder(&folder, Split::Train, 3)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train/dog/b.jpg: image is 5x4, expected 4x4"),
        "{err}"
    );
    let err = load_image_folder(&folder, Split::Test, 3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing the test split folder"), "{err}");
}

#[test]
fn grey_and_rgba_images_convert_to_the_dataset_channels() {
    let root = fixture_dir("folder-convert");
    let grey = image::GrayImage::from_fn(2, 2, |x, y| image::Luma([(10 * (x + 2 * y)) as u8]));
    std::fs::create_dir_all(root.join("train/a")).unwrap();
    grey.save(root.join("train/a/g.png")).unwrap();
    let rgba = image::RgbaImage::from_fn(2, 2, |x, _| image::Rgba([100, 50 + x as u8, 25, 7]));
    std::fs::create_dir_all(root.join("train/b")).unwrap();
    rgba.save(root.join("train/b/r.png")).unwrap();
    let ds = load_image_folder(&root, Split::Train, 3).unwrap();
    assert_eq!(ds.classes, vec!["a", "b"]);
    // Grey replicated to R, G and B (CHW).
    assert_eq!(ds.image(0), &[0, 10, 20, 30, 0, 10, 20, 30, 0, 10, 20, 30]);
    // RGBA: alpha dropped.
    assert_eq!(
        ds.image(1),
        &[100, 100, 100, 100, 50, 51, 50, 51, 25, 25, 25, 25]
    );
}

fn tiny_dataset(n: usize) -> Arc<ImageDataset> {
    let images: Vec<u8> = (0..n)
        .flat_map(|i| (0..12).map(move |p| pixel(i, p)))
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    Arc::new(ImageDataset::new("tiny", [3, 2, 2], digit_classes(), images, labels).unwrap())
}

#[test]
fn loader_shuffles_by_seed_covers_every_sample_and_resumes() {
    let ds = tiny_dataset(103);
    let config = LoaderConfig {
        batch_size: 10,
        prefetch: 2,
        ..LoaderConfig::notebook(7)
    };
    let loader = Loader::new(ds.clone(), config).unwrap();
    assert_eq!(loader.num_batches(), 11);
    let epoch0: Vec<_> = loader.epoch(0, 0).collect();
    assert_eq!(epoch0.len(), 11);
    assert_eq!(epoch0.last().unwrap().len(), 3);
    let mut seen: Vec<u8> = epoch0
        .iter()
        .flat_map(|b| b.images.chunks(12).map(|c| c[0]))
        .collect();
    seen.sort();
    let mut all: Vec<u8> = (0..103).map(|i| pixel(i, 0)).collect();
    all.sort();
    assert_eq!(seen, all, "every sample exactly once");
    // Same seed, same order; another epoch or seed, another order.
    let again = Loader::new(ds.clone(), config).unwrap();
    assert_eq!(again.order(0), loader.order(0));
    assert_ne!(loader.order(1), loader.order(0));
    let other = Loader::new(ds.clone(), LoaderConfig { seed: 8, ..config }).unwrap();
    assert_ne!(other.order(0), loader.order(0));
    // Resuming at batch 4 gives exactly the rest of the epoch.
    let resumed: Vec<_> = loader.epoch(0, 4).collect();
    assert_eq!(resumed, epoch0[4..].to_vec());
    // drop_last.
    let dropping = Loader::new(
        ds,
        LoaderConfig {
            drop_last: true,
            ..config
        },
    )
    .unwrap();
    assert_eq!(dropping.num_batches(), 10);
    assert_eq!(dropping.epoch(0, 0).count(), 10);
    assert_eq!(dropping.num_samples(), 100);
}

#[test]
fn augmented_batches_are_reproducible() {
    let ds = tiny_dataset(40);
    let config = LoaderConfig {
        batch_size: 8,
        augment: Augment {
            crop_padding: Some(1),
            hflip: true,
        },
        ..LoaderConfig::notebook(3)
    };
    let a: Vec<_> = Loader::new(ds.clone(), config)
        .unwrap()
        .epoch(2, 0)
        .collect();
    let b: Vec<_> = Loader::new(ds.clone(), config)
        .unwrap()
        .epoch(2, 0)
        .collect();
    assert_eq!(a, b);
    let plain: Vec<_> = Loader::new(
        ds,
        LoaderConfig {
            augment: Augment::default(),
            ..config
        },
    )
    .unwrap()
    .epoch(2, 0)
    .collect();
    assert_ne!(a, plain, "augmentation changes the images");
    assert_eq!(
        a.iter().map(|b| b.labels.clone()).collect::<Vec<_>>(),
        plain.iter().map(|b| b.labels.clone()).collect::<Vec<_>>()
    );
}

// F.interpolate(x, size, mode="bilinear", align_corners=False) from scripts/resize_reference.py,
// x[i] = (i * 7 % 11) / 10, shape (1, 2, 3, 4).
const UP_5X7: &[f32] = &[
    0.0, 0.25, 0.65, 0.5, 0.35, 0.75, 1.0, 0.24, 0.332857, 0.481429, 0.52, 0.558571, 0.707143, 0.8,
    0.6, 0.457143, 0.228571, 0.55, 0.871428, 0.642857, 0.5, 0.3, 0.392857, 0.541429, 0.58,
    0.571428, 0.342857, 0.2, 0.1, 0.35, 0.75, 0.6, 0.371428, 0.142857, 0.0, 0.7, 0.557143,
    0.328571, 0.65, 0.971429, 0.742857, 0.6, 0.5, 0.514286, 0.537143, 0.67, 0.771428, 0.542857,
    0.4, 0.2, 0.45, 0.85, 0.7, 0.471428, 0.242857, 0.1, 0.56, 0.574286, 0.597143, 0.4, 0.218571,
    0.367143, 0.46, 0.8, 0.657143, 0.428571, 0.2, 0.0500001, 0.45, 0.7,
];
const DOWN_2X3: &[f32] = &[
    0.220833, 0.5125, 0.804167, 0.295833, 0.5875, 0.191667, 0.554167, 0.6625, 0.541667, 0.629167,
    0.325, 0.479167,
];

#[test]
fn bilinear_resize_matches_pytorch_and_normalize_is_affine() {
    let x: Vec<f32> = (0..24).map(|i| (i * 7 % 11) as f32 / 10.0).collect();
    let x = Tensor::from_vec(x, (1, 2, 3, 4), &Device::Cpu).unwrap();
    for (size, want) in [((5, 7), UP_5X7), ((2, 3), DOWN_2X3)] {
        let y = resize_bilinear(&x, size.0, size.1).unwrap();
        assert_eq!(y.dims(), &[1, 2, size.0, size.1]);
        let got: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{size:?}: {g} vs PyTorch {w}");
        }
    }
    let n = normalize(&x, &[0.5, 0.25], &[0.5, 2.0]).unwrap();
    let got: Vec<f32> = n.flatten_all().unwrap().to_vec1().unwrap();
    assert!((got[0] - (0.0 - 0.5) / 0.5).abs() < 1e-6);
    assert!(
        (got[12] - (x.flatten_all().unwrap().to_vec1::<f32>().unwrap()[12] - 0.25) / 2.0).abs()
            < 1e-6
    );
    assert!(normalize(&x, &[0.5], &[0.5]).is_err());
}

#[test]
fn eval_transform_equals_scale_resize_normalize() {
    let bytes: Vec<u8> = (0..2 * 3 * 5 * 6).map(|i| (i * 37 % 256) as u8).collect();
    let batch = Tensor::from_vec(bytes, (2, 3, 5, 6), &Device::Cpu).unwrap();
    let t = super::transforms::InputTransform {
        height: 9,
        width: 4,
        mean: vec![0.4, 0.5, 0.6],
        std: vec![0.2, 0.25, 0.3],
        resize_shorter: None,
    };
    let fused = t.apply(&batch, &Device::Cpu).unwrap();
    let x = (batch.to_dtype(candle_core::DType::F32).unwrap() * (1.0 / 255.0)).unwrap();
    let reference = normalize(&resize_bilinear(&x, 9, 4).unwrap(), &t.mean, &t.std).unwrap();
    let diff = crate::testing::max_abs_diff(&fused, &reference).unwrap();
    assert!(diff < 1e-5, "{diff}");
}

/// `../shared/data` next to the repository, when present.
fn shared_data() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    dir.is_dir().then_some(dir)
}

#[test]
fn real_mnist_and_fashion_mnist_from_shared_data() {
    let Some(root) = shared_data() else {
        println!("skipped: ../shared/data is not present");
        return;
    };
    let (train, test) = super::resolve::load_dataset(&root, &crate::data::Dataset::Mnist).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!((train.channels, train.height, train.width), (1, 28, 28));
    // The published MNIST class counts of the training set.
    assert_eq!(
        train.class_counts(),
        vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(train.label(0), 5);
    // Image 0 (a 5): the top rows are blank, row 5 starts its stroke at column 12.
    assert!(train.image(0)[..28 * 4].iter().all(|&p| p == 0));
    assert_eq!(&train.image(0)[5 * 28 + 12..5 * 28 + 16], &[3, 18, 18, 18]);
    let (ftrain, ftest) =
        super::resolve::load_dataset(&root, &crate::data::Dataset::FashionMnist).unwrap();
    assert_eq!((ftrain.len(), ftest.len()), (60_000, 10_000));
    assert_eq!(ftrain.class_counts(), vec![6000; 10]);
    assert_eq!(ftrain.classes[9], "Ankle boot");
}

#[test]
fn real_cifar10_from_the_shared_tarball() {
    let Some(root) = shared_data() else {
        println!("skipped: ../shared/data is not present");
        return;
    };
    // Extract once per machine into the temp folder (60,000 small JPEGs).
    let data_root = std::env::temp_dir().join("zoo-shared-cifar10");
    let dir = data_root.join("cifar10");
    if !dir.join(".complete").is_file() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("tar")
            .arg("xzf")
            .arg(root.join("cifar10-jpg.tar.gz"))
            .arg("-C")
            .arg(&dir)
            .status()
            .expect("tar runs");
        assert!(status.success());
        std::fs::write(dir.join(".complete"), b"").unwrap();
    }
    let (train, test) =
        super::resolve::load_dataset(&data_root, &crate::data::Dataset::Cifar10).unwrap();
    assert_eq!((train.len(), test.len()), (50_000, 10_000));
    assert_eq!(train.classes, super::names(&super::CIFAR10_CLASSES));
    assert_eq!(train.class_counts(), vec![5000; 10]);
    assert_eq!(test.class_counts(), vec![1000; 10]);
    // CIFAR-10's published per-channel training means are (125.3, 123.0, 113.9) of 255; the
    // JPEG copy stays within about a level. A swapped channel order would be 11 levels off.
    let plane = 32 * 32;
    let mut sums = [0f64; 3];
    for i in 0..train.len() {
        for (c, sum) in sums.iter_mut().enumerate() {
            *sum += train.image(i)[c * plane..(c + 1) * plane]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>();
        }
    }
    let means: Vec<f64> = sums
        .iter()
        .map(|s| s / (train.len() * plane) as f64)
        .collect();
    for (m, want) in means.iter().zip([125.3, 123.0, 113.9]) {
        assert!((m - want).abs() < 1.5, "channel means {means:?}");
    }
}

#[test]
fn a_dataset_is_located_by_its_files_and_a_missing_one_is_typed_not_found() {
    use super::resolve::{DatasetFormat, locate};
    let root = fixture_dir("locate");
    let err = locate(&root, &crate::data::Dataset::Cifar10).unwrap_err();
    assert!(
        err.is_not_found() && err.to_string().contains("CIFAR-10 not found"),
        "{err}"
    );
    let err = locate(&root, &crate::data::Dataset::Mnist).unwrap_err();
    assert!(
        err.is_not_found() && err.to_string().contains("IDX files"),
        "{err}"
    );
    // Present but unreadable files are located all the same: decoding is the loader's job,
    // and its error then names the file instead of calling the dataset missing.
    let bin = root.join("cifar10/cifar-10-batches-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("data_batch_1.bin"), b"not a batch").unwrap();
    assert_eq!(
        locate(&root, &crate::data::Dataset::Cifar10).unwrap(),
        DatasetFormat::Cifar10Binary(bin.clone())
    );
    let err = super::resolve::load_split(&root, &crate::data::Dataset::Cifar10, Split::Train)
        .unwrap_err();
    assert!(err.to_string().contains("data_batch_1.bin"), "{err}");
    // An image folder needs both splits.
    std::fs::create_dir_all(root.join("pets/train/cat")).unwrap();
    let err = locate(&root, &crate::data::Dataset::parse("pets").unwrap()).unwrap_err();
    assert!(
        err.is_not_found() && err.to_string().contains("test split"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn imagenet_classes_are_torchvisions_thousand() {
    let c = super::imagenet_classes();
    assert_eq!(c.len(), 1000);
    assert_eq!((c[0].as_str(), c[1].as_str()), ("tench", "goldfish"));
    assert_eq!(c[207], "golden retriever");
    assert_eq!(c[999], "toilet tissue");
}

#[test]
fn an_imagenet_transform_resizes_crops_and_is_validated() {
    let t = super::transforms::InputTransform::imagenet();
    t.validate(3).unwrap();
    // A 3x300x400 image: shorter side 256 -> 256x341, crop 224x224.
    let img = vec![128u8; 3 * 300 * 400];
    let (h, w, bytes) = t.prepare_image(img, 3, (300, 400)).unwrap();
    assert_eq!((h, w, bytes.len()), (224, 224, 3 * 224 * 224));
    let x = Tensor::from_vec(bytes, (1, 3, 224, 224), &Device::Cpu).unwrap();
    let y = t.apply(&x, &Device::Cpu).unwrap().flatten_all().unwrap();
    let first = y.to_vec1::<f32>().unwrap()[0];
    assert!(
        (first - (128.0 / 255.0 - 0.485) / 0.229).abs() < 1e-5,
        "{first}"
    );
    // A crop larger than the resize is refused, naming the field.
    let bad = super::transforms::InputTransform {
        resize_shorter: Some(200),
        ..t.clone()
    };
    assert!(
        bad.validate(3)
            .unwrap_err()
            .to_string()
            .contains("resize_shorter 200")
    );
    // A plain transform leaves the image to the batch resize.
    let plain = super::transforms::InputTransform::notebook(3, 32);
    let (h, w, _) = plain.prepare_image(vec![0; 3 * 5 * 7], 3, (5, 7)).unwrap();
    assert_eq!((h, w), (5, 7));
}
