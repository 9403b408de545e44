//! Datasets from the Hugging Face hub (through candle-datasets' parquet loaders), for users with
//! a network: `--features hub`. The conversion to zoo's u8 `(N, C, H, W)` is always compiled and
//! tested; candle-datasets' `cifar::load()` returns `(N, C, W, H)` (transposed against its own
//! `load_dir`) and is turned the right way round here.

use candle_core::{DType, Tensor};

use super::ImageDataset;
#[cfg(feature = "hub")]
use super::{CIFAR10_CLASSES, FASHION_MNIST_CLASSES, digit_classes, names};

/// How candle-datasets lays out a tensor of images (f32 in [0, 1]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubLayout {
    /// `(N, H*W)` grey images (`mnist::load`, `fashion_mnist::load`).
    FlatGrey { height: usize, width: usize },
    /// `(N, C, W, H)`: `cifar::load`.
    ChannelsWidthHeight,
}

/// Converts candle-datasets tensors to an [`ImageDataset`] in zoo's orientation.
pub fn from_hub_tensors(
    source: &str,
    images: &Tensor,
    labels: &Tensor,
    layout: HubLayout,
    classes: Vec<String>,
) -> candle_core::Result<ImageDataset> {
    let n = images.dim(0)?;
    let nchw = match layout {
        HubLayout::FlatGrey { height, width } => images.reshape((n, 1, height, width))?,
        HubLayout::ChannelsWidthHeight => images.transpose(2, 3)?,
    };
    let [_, c, h, w] = nchw.dims() else {
        candle_core::bail!(
            "{source}: expected 4-d images after reshaping, got {:?}",
            nchw.dims()
        )
    };
    let (c, h, w) = (*c, *h, *w);
    let bytes: Vec<u8> = (nchw * 255.0)?
        .round()?
        .clamp(0.0, 255.0)?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1()?;
    let labels: Vec<u8> = labels.to_dtype(DType::U8)?.to_vec1()?;
    ImageDataset::new(source, [c, h, w], classes, bytes, labels)
}

/// Downloads (or reads from the hub cache) both splits of `name`.
#[cfg(feature = "hub")]
pub fn download(dataset: &super::Dataset) -> candle_core::Result<(ImageDataset, ImageDataset)> {
    use super::Dataset;
    use candle_datasets::vision;
    let name = dataset.name();
    let (data, layout, classes) = match dataset {
        Dataset::Mnist => (
            vision::mnist::load()?,
            HubLayout::FlatGrey {
                height: 28,
                width: 28,
            },
            digit_classes(),
        ),
        Dataset::FashionMnist => (
            vision::fashion_mnist::load()?,
            HubLayout::FlatGrey {
                height: 28,
                width: 28,
            },
            names(&FASHION_MNIST_CLASSES),
        ),
        Dataset::Cifar10 => (
            vision::cifar::load()?,
            HubLayout::ChannelsWidthHeight,
            names(&CIFAR10_CLASSES),
        ),
        Dataset::Folder(other) => {
            candle_core::bail!("{other}: no hub source (known: mnist, fashion-mnist, cifar10)")
        }
    };
    let source = format!("huggingface hub ({name})");
    Ok((
        from_hub_tensors(
            &format!("{source} train"),
            &data.train_images,
            &data.train_labels,
            layout,
            classes.clone(),
        )?,
        from_hub_tensors(
            &format!("{source} test"),
            &data.test_images,
            &data.test_labels,
            layout,
            classes,
        )?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn hub_tensors_come_out_in_zoos_orientation() {
        // One 3x2x4 RGB image (c, h, w) with distinct bytes, as candle-datasets' cifar::load
        // would hand it over: f32 / 255, permuted to (n, c, w, h).
        let chw: Vec<u8> = (0..24).map(|i| (i * 10) as u8).collect();
        let t = Tensor::from_vec(chw.clone(), (1, 3, 2, 4), &Device::Cpu).unwrap();
        let hub = (t.to_dtype(DType::F32).unwrap() / 255.0)
            .unwrap()
            .transpose(2, 3)
            .unwrap();
        let labels = Tensor::new(&[7u8], &Device::Cpu).unwrap();
        let ds = from_hub_tensors(
            "hub",
            &hub,
            &labels,
            HubLayout::ChannelsWidthHeight,
            super::super::digit_classes(),
        )
        .unwrap();
        assert_eq!((ds.channels, ds.height, ds.width), (3, 2, 4));
        assert_eq!(
            ds.image(0),
            chw.as_slice(),
            "pixel for pixel, rows stay rows"
        );
        assert_eq!(ds.label(0), 7);
        // MNIST: flat rows of 784 values.
        let flat: Vec<f32> = (0..784).map(|i| (i % 256) as f32 / 255.0).collect();
        let flat = Tensor::from_vec(flat, (1, 784), &Device::Cpu).unwrap();
        let ds = from_hub_tensors(
            "hub",
            &flat,
            &labels,
            HubLayout::FlatGrey {
                height: 28,
                width: 28,
            },
            super::super::digit_classes(),
        )
        .unwrap();
        assert_eq!(ds.image(0)[28 + 3], 31);
        // A label out of range is refused, as for every other source.
        let bad = Tensor::new(&[12u8], &Device::Cpu).unwrap();
        assert!(
            from_hub_tensors(
                "hub",
                &flat,
                &bad,
                HubLayout::FlatGrey {
                    height: 28,
                    width: 28
                },
                super::super::digit_classes()
            )
            .is_err()
        );
    }
}
