//! `cargo xtask data` and `make-sample`: the data root filled from ../shared/data, and the
//! committed sample in samples/ written from it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use zoo_core::fs::{copy_atomic, write_atomic};

use crate::project_root;

/// The project's shared data folder, beside the repository.
pub fn shared_data() -> PathBuf {
    project_root().join("../shared/data")
}

/// Fills the data root `root` from `shared`: the MNIST and Fashion-MNIST IDX files copied,
/// CIFAR-10's JPEG folders extracted from its tarball. Idempotent, and never leaves a part for
/// a whole: copies go through a temporary name, the extraction through a folder of its own.
pub fn prepare_data(shared: &Path, root: &Path) -> Result<()> {
    anyhow::ensure!(
        shared.is_dir(),
        "{} not found: nothing to copy from",
        shared.display()
    );
    for name in ["mnist", "fashion-mnist"] {
        let dst = root.join(name);
        std::fs::create_dir_all(&dst).with_context(|| format!("creating {}", dst.display()))?;
        for entry in std::fs::read_dir(shared.join(name))
            .with_context(|| format!("listing {}", shared.join(name).display()))?
        {
            let path = entry?.path();
            let target = dst.join(path.file_name().context("file name")?);
            if !target.exists() {
                // Whole or not at all: a copy cut short is never taken for the file.
                copy_atomic(&path, &target)?;
            }
        }
        println!("{name}: {}", dst.display());
    }
    fill_cifar10(shared, root)
}

/// CIFAR-10 under `root/cifar10`: its JPEG `train/` and `test/` folders extracted from the
/// shared tarball where missing. Adds and never removes: a CIFAR-10 already there in the
/// binary format (`cifar-10-batches-bin/`, which the loader prefers) is kept as it is, and the
/// extraction goes into a folder of its own (`cifar10.extracting`, the one thing removed, as
/// zoo's own leftover), each split moved into place whole.
fn fill_cifar10(shared: &Path, root: &Path) -> Result<()> {
    let cifar = root.join("cifar10");
    if cifar.join("cifar-10-batches-bin").is_dir() {
        println!("cifar10: {} (binary batches, kept)", cifar.display());
        return Ok(());
    }
    let missing: Vec<&str> = ["train", "test"]
        .into_iter()
        .filter(|split| !cifar.join(split).is_dir())
        .collect();
    if missing.is_empty() {
        println!("cifar10: {} (already extracted)", cifar.display());
        return Ok(());
    }
    let partial = root.join("cifar10.extracting");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
    std::fs::create_dir_all(&partial)?;
    let tarball = shared.join("cifar10-jpg.tar.gz");
    println!("cifar10: extracting {} ...", tarball.display());
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&partial)
        .status()
        .context("running tar")?;
    anyhow::ensure!(status.success(), "tar failed on {}", tarball.display());
    std::fs::create_dir_all(&cifar).with_context(|| format!("creating {}", cifar.display()))?;
    for split in missing {
        let (from, to) = (partial.join(split), cifar.join(split));
        std::fs::rename(&from, &to)
            .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    }
    std::fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    println!("cifar10: {}", cifar.display());
    Ok(())
}

/// samples/: 400 training images per class of CIFAR-10 (as binary batches) and 200 of MNIST
/// (IDX .gz), 100 test images per class of each, from the full datasets.
pub fn make_sample(root: &Path) -> Result<()> {
    use std::io::Write;
    use zoo_core::data::Split;
    use zoo_core::data::resolve::load_split;
    let out = project_root().join("samples");
    let cifar_dir = out.join("cifar10/cifar-10-batches-bin");
    std::fs::create_dir_all(&cifar_dir)?;
    let train =
        load_split(root, &zoo_core::data::Dataset::Cifar10, Split::Train)?.per_class_prefix(200);
    let test =
        load_split(root, &zoo_core::data::Dataset::Cifar10, Split::Test)?.per_class_prefix(50);
    let encode = |ds: &zoo_core::data::ImageDataset, range: std::ops::Range<usize>| {
        let images: Vec<u8> = range.clone().flat_map(|i| ds.image(i).to_vec()).collect();
        zoo_core::data::cifar::encode_cifar_batch(&images, &ds.labels()[range])
    };
    let per_file = train.len() / 5;
    for b in 0..5 {
        write_atomic(
            &cifar_dir.join(format!("data_batch_{}.bin", b + 1)),
            &encode(&train, b * per_file..(b + 1) * per_file),
        )?;
    }
    write_atomic(
        &cifar_dir.join("test_batch.bin"),
        &encode(&test, 0..test.len()),
    )?;
    let mnist_dir = out.join("mnist");
    std::fs::create_dir_all(&mnist_dir)?;
    for (split, n, prefix) in [(Split::Train, 200, "train"), (Split::Test, 50, "t10k")] {
        let ds = load_split(root, &zoo_core::data::Dataset::Mnist, split)?.per_class_prefix(n);
        let images: Vec<u8> = (0..ds.len()).flat_map(|i| ds.image(i).to_vec()).collect();
        for (name, bytes) in [
            (
                format!("{prefix}-images-idx3-ubyte.gz"),
                zoo_core::data::idx::encode_idx(&[ds.len(), 28, 28], &images),
            ),
            (
                format!("{prefix}-labels-idx1-ubyte.gz"),
                zoo_core::data::idx::encode_idx(&[ds.len()], ds.labels()),
            ),
        ] {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(&bytes)?;
            write_atomic(&mnist_dir.join(name), &enc.finish()?)?;
        }
    }
    println!("wrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared folder with one IDX file per digit set and a CIFAR-10 tarball of two classes.
    fn shared_folder(dir: &Path) -> PathBuf {
        let shared = dir.join("shared");
        for name in ["mnist", "fashion-mnist"] {
            std::fs::create_dir_all(shared.join(name)).unwrap();
            std::fs::write(shared.join(name).join("t10k-labels-idx1-ubyte.gz"), name).unwrap();
        }
        let tree = dir.join("tree");
        for split in ["train", "test"] {
            std::fs::create_dir_all(tree.join(split).join("cat")).unwrap();
            std::fs::write(tree.join(split).join("cat/0.jpg"), split).unwrap();
        }
        let status = std::process::Command::new("tar")
            .arg("czf")
            .arg(shared.join("cifar10-jpg.tar.gz"))
            .arg("-C")
            .arg(&tree)
            .args(["train", "test"])
            .status()
            .unwrap();
        assert!(status.success());
        shared
    }

    #[test]
    fn fills_the_root_and_replaces_a_cut_short_extraction() {
        let dir = zoo_core::testing::scratch_dir("xtask-data");
        let shared = shared_folder(&dir);
        let root = dir.join("data");
        prepare_data(&shared, &root).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(read("mnist/t10k-labels-idx1-ubyte.gz"), "mnist");
        assert_eq!(
            read("fashion-mnist/t10k-labels-idx1-ubyte.gz"),
            "fashion-mnist"
        );
        assert_eq!(read("cifar10/test/cat/0.jpg"), "test");
        assert!(!root.join("cifar10.extracting").exists());
        // A run killed during the extraction: half a folder beside a cifar10/ without test/.
        std::fs::remove_dir_all(root.join("cifar10/test")).unwrap();
        std::fs::create_dir_all(root.join("cifar10.extracting/train")).unwrap();
        prepare_data(&shared, &root).unwrap();
        assert_eq!(read("cifar10/test/cat/0.jpg"), "test");
        assert_eq!(read("cifar10/train/cat/0.jpg"), "train");
        assert!(!root.join("cifar10.extracting").exists());
        // A CIFAR-10 in the binary format, or anything else of the user's, is never removed.
        let bin = root.join("cifar10/cifar-10-batches-bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("data_batch_1.bin"), "mine").unwrap();
        std::fs::write(root.join("cifar10/notes.txt"), "mine too").unwrap();
        prepare_data(&shared, &root).unwrap();
        assert_eq!(
            read("cifar10/cifar-10-batches-bin/data_batch_1.bin"),
            "mine"
        );
        assert_eq!(read("cifar10/notes.txt"), "mine too");
        std::fs::remove_dir_all(&bin).unwrap();
        std::fs::remove_dir_all(root.join("cifar10/train")).unwrap();
        prepare_data(&shared, &root).unwrap();
        assert_eq!(read("cifar10/notes.txt"), "mine too");
        assert_eq!(read("cifar10/train/cat/0.jpg"), "train");
        assert!(!root.join("cifar10.extracting").exists());
        // Nothing to copy from: an error naming the folder.
        let err = prepare_data(&dir.join("nowhere"), &root).unwrap_err();
        assert!(err.to_string().contains("nowhere"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
