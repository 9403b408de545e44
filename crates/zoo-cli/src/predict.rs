//! `zoo predict`: the top-5 classes of image files through a checkpoint and its input
//! transform.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::loaded_model::{LoadedModel, load_model};

/// One image's prediction.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub image: PathBuf,
    /// (class, probability), best first.
    pub top5: Vec<(String, f32)>,
    pub logits: Vec<f32>,
}

/// Top-5 classes of each image, using the checkpoint's evaluation transform. The images go
/// through one frozen-weights scope: what the layers derive from the weights is derived once.
pub fn predict(checkpoint: &Path, images: &[PathBuf], device: &str) -> Result<Vec<Prediction>> {
    let loaded = load_model(checkpoint, device)?;
    zoo_core::frozen::frozen_weights(|| images.iter().map(|p| predict_one(&loaded, p)).collect())
}

/// One image's top-5 classes and logits.
fn predict_one(loaded: &LoadedModel, path: &Path) -> Result<Prediction> {
    let input = loaded.meta.run.input;
    let transform = &loaded.meta.run.eval_transform;
    let (h, w, chw) = zoo_core::data::folder::decode_image(path, input.channels)?;
    let (h, w, chw) = transform
        .prepare_image(chw, input.channels, (h, w))
        .with_context(|| path.display().to_string())?;
    let x = candle_core::Tensor::from_vec(chw, (1, input.channels, h, w), &loaded.device)?;
    let x = transform.apply(&x, &loaded.device)?;
    let logits = zoo_core::grad::no_grad(|| loaded.model.forward_t(&x, false))?.squeeze(0)?;
    let probs = candle_nn::ops::softmax(&logits, 0)?.to_vec1::<f32>()?;
    let values = logits.to_vec1::<f32>()?;
    // Ranked by logit, not by probability: near-equal logits can round to one f32
    // probability, and their order would then be the sort's, not the network's.
    let mut ranked: Vec<(usize, f32)> = probs.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| values[b.0].total_cmp(&values[a.0]));
    Ok(Prediction {
        image: path.to_path_buf(),
        top5: ranked
            .iter()
            .take(5)
            .map(|&(i, p)| {
                (
                    loaded
                        .meta
                        .run
                        .classes
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| i.to_string()),
                    p,
                )
            })
            .collect(),
        logits: values,
    })
}
