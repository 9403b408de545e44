//! The loader: a seeded shuffle per epoch, batching, augmentation on a background thread
//! that keeps the next batches ready, and resumption from any batch of an epoch.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use super::ImageDataset;
use super::augment::Augment;
use crate::distributed::Shard;
use crate::rng::{ZooRng, streams};

/// How batches are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: u64,
    pub augment: Augment,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
}

impl LoaderConfig {
    /// The notebook's loader: batch 128, shuffled, last partial batch kept, no augmentation.
    pub fn notebook(seed: u64) -> Self {
        Self {
            batch_size: 128,
            shuffle: true,
            drop_last: false,
            seed,
            augment: Augment::default(),
            prefetch: 4,
        }
    }
}

/// One batch of u8 images `(b, c, h, w)` and their labels: a whole batch, or one rank's slice
/// of it in data-parallel training.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Position of the batch in its epoch.
    pub index: usize,
    /// Images in the whole (global) batch, of which this one holds a slice; its `len()` when
    /// the loader is not sharded.
    pub global_len: usize,
    pub shape: [usize; 4],
    pub images: Vec<u8>,
    pub labels: Vec<u32>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images as a u8 tensor on `device` (convert with an `InputTransform` there).
    pub fn images_tensor(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice(&self.images, self.shape.as_slice(), device)
    }

    /// The labels as u32, the dtype candle's losses take.
    pub fn labels_tensor(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice(&self.labels, self.labels.len(), device)
    }
}

/// SplitMix64 of three words: independent seeds for (run seed, epoch, batch).
pub fn mix_seed(a: u64, b: u64, c: u64) -> u64 {
    let mut z = a
        .wrapping_add(b.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(c.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Batches of a dataset, epoch by epoch.
#[derive(Debug, Clone)]
pub struct Loader {
    dataset: Arc<ImageDataset>,
    config: LoaderConfig,
    shard: Shard,
}

impl Loader {
    pub fn new(dataset: Arc<ImageDataset>, config: LoaderConfig) -> Result<Self> {
        if config.batch_size == 0 {
            candle_core::bail!("loader: batch size must be at least 1")
        }
        if dataset.is_empty() {
            candle_core::bail!("loader: dataset {} is empty", dataset.source)
        }
        Ok(Self {
            dataset,
            config,
            shard: Shard::WHOLE,
        })
    }

    /// This loader for one rank of a data-parallel group: the same global batches (one seeded
    /// order shared by all ranks, `num_batches` unchanged), of which it yields the rank's slice
    /// ([`Shard::range`]); augmentation draws exactly what the whole batch would.
    pub fn sharded(mut self, shard: Shard) -> Self {
        self.shard = shard;
        self
    }

    pub fn shard(&self) -> Shard {
        self.shard
    }

    pub fn dataset(&self) -> &ImageDataset {
        &self.dataset
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.config.batch_size);
        if self.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// Samples per epoch (after dropping the last partial batch, if asked).
    pub fn num_samples(&self) -> usize {
        if self.config.drop_last {
            self.num_batches() * self.config.batch_size
        } else {
            self.dataset.len()
        }
    }

    /// The sample order of `epoch`: the same for the same seed on every machine.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.config.shuffle {
            ZooRng::with_stream(
                mix_seed(self.config.seed, epoch as u64, 0),
                streams::SHUFFLE,
            )
            .shuffle(&mut order);
        }
        order
    }

    /// Assembles batch `index` of an epoch whose order is `order` (this rank's slice of it).
    pub fn make_batch(&self, epoch: usize, order: &[usize], index: usize) -> Batch {
        let d = &self.dataset;
        let b = self.config.batch_size;
        let global = &order[index * b..((index + 1) * b).min(order.len())];
        let mine = self.shard.range(global.len());
        let ids = &global[mine.clone()];
        let chw = [d.channels, d.height, d.width];
        let mut images = Vec::with_capacity(ids.len() * d.image_len());
        let mut rng = ZooRng::with_stream(
            mix_seed(self.config.seed, epoch as u64, index as u64 + 1),
            streams::AUGMENT,
        );
        let mut scratch = Vec::new();
        let mut skipped = Vec::new();
        // The augmentation generator walks the whole batch in order, so that a rank's images
        // get the draws they would get in one process: earlier ranks' images are augmented
        // into a throw-away buffer.
        let walk = if self.config.augment.is_none() {
            mine.clone()
        } else {
            0..mine.end
        };
        for j in walk {
            let i = global[j];
            let target = if mine.contains(&j) {
                let start = images.len();
                images.extend_from_slice(d.image(i));
                &mut images[start..]
            } else {
                skipped.clear();
                skipped.extend_from_slice(d.image(i));
                &mut skipped[..]
            };
            if !self.config.augment.is_none() {
                self.config
                    .augment
                    .apply(target, chw, &mut rng, &mut scratch);
            }
        }
        Batch {
            index,
            global_len: global.len(),
            shape: [ids.len(), d.channels, d.height, d.width],
            images,
            labels: ids.iter().map(|&i| d.label(i) as u32).collect(),
        }
    }

    /// The batches of `epoch` from batch `start` on, prepared on a background thread.
    pub fn epoch(&self, epoch: usize, start: usize) -> BatchIter {
        let (tx, rx) = sync_channel(self.config.prefetch.max(1));
        let loader = self.clone();
        let worker = std::thread::spawn(move || {
            let order = loader.order(epoch);
            for index in start..loader.num_batches() {
                if tx.send(loader.make_batch(epoch, &order, index)).is_err() {
                    return; // the consumer stopped early
                }
            }
        });
        BatchIter {
            rx: Some(rx),
            worker: Some(worker),
        }
    }
}

/// Iterator over prepared batches; dropping it stops the worker.
pub struct BatchIter {
    rx: Option<Receiver<Batch>>,
    worker: Option<JoinHandle<()>>,
}

impl Iterator for BatchIter {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for BatchIter {
    fn drop(&mut self) {
        self.rx.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
