//! Finding a dataset: one data root (`--data-dir`, else `ZOO_DATA`, else `./data`), one folder
//! per dataset under it, each in any of its standard formats.

use std::path::{Path, PathBuf};

use candle_core::Result;

use crate::error::ReadError;

use super::cifar::load_cifar10_bin;
use super::folder::{Fit, load_image_folder_fitted};
use super::idx::{find_raw_or_gz, idx_file_names, load_idx_split};
use super::{Dataset, FASHION_MNIST_CLASSES, ImageDataset, Split, digit_classes, names};

/// The data root: the flag, else `$ZOO_DATA`, else `./data`.
pub fn data_root(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ZOO_DATA").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("data"))
}

/// The on-disk format a dataset was found in, and its folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetFormat {
    /// CIFAR-10's binary batches (`cifar-10-batches-bin/`).
    Cifar10Binary(PathBuf),
    /// `train/` and `test/` folders of class folders of images.
    ImageFolders(PathBuf),
    /// The four IDX files of MNIST or Fashion-MNIST, raw or gzip.
    Idx(PathBuf),
}

/// Where one split of dataset `name` is under `root`, by its files' presence alone (nothing is
/// read or decoded); [`ReadError::NotFound`] saying what to put there otherwise.
pub fn locate_split(
    root: &Path,
    dataset: &Dataset,
    split: Split,
) -> std::result::Result<DatasetFormat, ReadError> {
    let name = dataset.name();
    let dir = root.join(name);
    match dataset {
        Dataset::Cifar10 => {
            let bin = dir.join("cifar-10-batches-bin");
            if bin.is_dir() {
                Ok(DatasetFormat::Cifar10Binary(bin))
            } else if dir.join(split.name()).is_dir() {
                Ok(DatasetFormat::ImageFolders(dir))
            } else {
                Err(ReadError::not_found(
                    &dir,
                    format!(
                        "CIFAR-10 not found under {}: put the binary version there as \
                     {}/cifar-10-batches-bin/{{data_batch_1..5.bin,test_batch.bin}} (the official \
                     cifar-10-binary.tar.gz unpacked), or image folders {}/{{train,test}}/<class>/*.png|jpg",
                        dir.display(),
                        dir.display(),
                        dir.display()
                    ),
                ))
            }
        }
        Dataset::Mnist | Dataset::FashionMnist => {
            let [images, _] = idx_file_names(split);
            match find_raw_or_gz(&dir, images) {
                Some(_) => Ok(DatasetFormat::Idx(dir)),
                None => Err(ReadError::not_found(
                    &dir,
                    format!(
                        "{name} not found under {}: put the four IDX files there, raw or .gz: \
                     train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, \
                     t10k-labels-idx1-ubyte",
                        dir.display()
                    ),
                )),
            }
        }
        Dataset::Folder(_) => {
            let split_dir = dir.join(split.name());
            match split_dir.is_dir() {
                true => Ok(DatasetFormat::ImageFolders(dir)),
                false => Err(ReadError::not_found(
                    &split_dir,
                    format!(
                        "{}: missing the {} split folder (expected {}/<class>/*.png|jpg)",
                        split_dir.display(),
                        split.name(),
                        split_dir.display()
                    ),
                )),
            }
        }
    }
}

/// Where dataset `name` is under `root`: both splits located, nothing decoded.
pub fn locate(root: &Path, dataset: &Dataset) -> std::result::Result<DatasetFormat, ReadError> {
    locate_split(root, dataset, Split::Test)?;
    locate_split(root, dataset, Split::Train)
}

/// Loads one split of dataset `name` from `root/name/`, in whichever format is there.
pub fn load_split(root: &Path, dataset: &Dataset, split: Split) -> Result<ImageDataset> {
    load_split_fitted(root, dataset, split, None)
}

/// [`load_split`], the images of an image-folder dataset brought to one size by `fit` (the
/// fixed-size formats are left as they are).
pub fn load_split_fitted(
    root: &Path,
    dataset: &Dataset,
    split: Split,
    fit: Option<Fit>,
) -> Result<ImageDataset> {
    match locate_split(root, dataset, split)? {
        DatasetFormat::Cifar10Binary(bin) => load_cifar10_bin(&bin, split),
        DatasetFormat::ImageFolders(dir) => {
            load_image_folder_fitted(&dir, split, dataset.channels(), fit)
        }
        DatasetFormat::Idx(dir) => {
            let classes = if *dataset == Dataset::Mnist {
                digit_classes()
            } else {
                names(&FASHION_MNIST_CLASSES)
            };
            load_idx_split(&dir, split, classes)
        }
    }
}

/// Both splits, which must have the same classes (by name, in the same order).
pub fn load_dataset(root: &Path, dataset: &Dataset) -> Result<(ImageDataset, ImageDataset)> {
    load_dataset_fitted(root, dataset, None)
}

/// [`load_dataset`], an image folder's images brought to one size by `fit`.
pub fn load_dataset_fitted(
    root: &Path,
    dataset: &Dataset,
    fit: Option<Fit>,
) -> Result<(ImageDataset, ImageDataset)> {
    let train = load_split_fitted(root, dataset, Split::Train, fit)?;
    let test = load_split_fitted(root, dataset, Split::Test, fit)?;
    let name = dataset.name();
    same_classes(
        &train.classes,
        &test.classes,
        &format!("{name} under {}: the train split", root.display()),
        "the test split",
    )?;
    Ok((train, test))
}

/// An error naming the classes that only one side has (or the first that differs in order).
pub fn same_classes(a: &[String], b: &[String], a_name: &str, b_name: &str) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let only = |x: &[String], y: &[String]| -> Vec<String> {
        x.iter().filter(|c| !y.contains(c)).cloned().collect()
    };
    let (only_a, only_b) = (only(a, b), only(b, a));
    if only_a.is_empty() && only_b.is_empty() {
        candle_core::bail!(
            "{a_name} has the classes {a:?} and {b_name} has {b:?}: the same names in another \
             order, so the labels would not match"
        )
    }
    candle_core::bail!(
        "{a_name} and {b_name} have different classes: only in {a_name}: {only_a:?}; only in \
         {b_name}: {only_b:?}"
    )
}
