//! The evaluator: accuracy, mean loss and confusion matrix of a model on a loader, in
//! evaluation mode, alone or summed over data-parallel ranks, with the accuracy of horizontal-flip
//! test-time augmentation beside it on request; and an epoch's evaluation of the raw weights and
//! their EMA.

use std::path::Path;

use candle_core::{D, DType, Device, Result, Tensor};

use super::ema::Ema;
use super::loss::{correct_on_device, cross_entropy};
use super::readback::read_to_host;
use crate::data::loader::Loader;
use crate::data::transforms::InputTransform;
use crate::distributed::Collective;
use crate::distributed::sync::all_reduce_values;
use crate::model::Model;

/// Accuracy, mean loss and confusion matrix (`[true][predicted]`) of a model on a loader.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    pub confusion: Vec<Vec<usize>>,
    /// Accuracy of the two views' summed logits (the image and its mirror image), when asked
    /// for: test-time augmentation. Loss and confusion are the plain view's.
    pub flip_accuracy: Option<f64>,
}

/// Evaluates `model` in evaluation mode (no graph kept: inputs carry no gradient) in one
/// frozen-weights scope (`zoo_nn::frozen`). Loss, hits and the confusion matrix add up on the
/// device and are read once, at the end.
pub fn evaluate(
    model: &dyn Model,
    loader: &Loader,
    transform: &InputTransform,
    device: &Device,
) -> Result<Evaluation> {
    evaluate_on(model, loader, transform, device, None, false)
}

/// [`evaluate`] on one rank of a data-parallel group: each rank evaluates its shard of
/// `loader`'s batches and the totals are summed over ranks, so every rank gets the whole set's
/// figures. With `None` (or a world of one), [`evaluate`]. With `flip`, each batch is also
/// evaluated mirrored left to right and [`Evaluation::flip_accuracy`] counts the hits of the two
/// views' summed logits.
pub fn evaluate_on(
    model: &dyn Model,
    loader: &Loader,
    transform: &InputTransform,
    device: &Device,
    collective: Option<&dyn Collective>,
    flip: bool,
) -> Result<Evaluation> {
    let k = model.num_classes();
    let classes = Tensor::arange(0u32, k as u32, device)?.unsqueeze(0)?;
    let (sums, mut seen) = crate::frozen::frozen_weights(|| {
        summed_batches(model, loader, transform, device, &classes, flip)
    })?;
    let mut values = match &sums {
        Some((a, c)) => read_to_host(&Tensor::cat(&[a, &c.flatten_all()?], 0)?)?,
        None => vec![0.0; 3 + k * k],
    };
    if let Some(c) = collective.filter(|c| c.world_size() > 1) {
        values.push(seen as f64);
        values = all_reduce_values(c, &values, device)?;
        seen = values.pop().unwrap_or(0.0).round() as usize;
    }
    let confusion = values[3..]
        .chunks(k)
        .map(|row| row.iter().map(|&v| v.round() as usize).collect())
        .collect();
    Ok(Evaluation {
        loss: values[0] / seen.max(1) as f64,
        accuracy: values[1] / seen.max(1) as f64,
        confusion,
        flip_accuracy: flip.then(|| values[2] / seen.max(1) as f64),
    })
}

/// The loader's batches' [`batch_sums`] added up on the device, and the images seen.
fn summed_batches(
    model: &dyn Model,
    loader: &Loader,
    transform: &InputTransform,
    device: &Device,
    classes: &Tensor,
    flip: bool,
) -> Result<(Option<(Tensor, Tensor)>, usize)> {
    let mut sums: Option<(Tensor, Tensor)> = None;
    let mut seen = 0usize;
    for batch in loader.epoch(0, 0) {
        if batch.is_empty() {
            continue; // a rank's empty slice of a short last batch
        }
        let x = transform.apply(&batch.images_tensor(device)?, device)?;
        let y = batch.labels_tensor(device)?;
        let step = batch_sums(model, &x, &y, classes, flip)?;
        sums = Some(match sums.take() {
            Some((a, c)) => ((a + step.0)?, (c + step.1)?),
            None => step,
        });
        seen += batch.len();
    }
    Ok((sums, seen))
}

/// One batch's summed loss, hits and flip-view hits (`[3]`), and its confusion matrix, on the
/// device.
fn batch_sums(
    model: &dyn Model,
    x: &Tensor,
    y: &Tensor,
    classes: &Tensor,
    flip: bool,
) -> Result<(Tensor, Tensor)> {
    // No graph: each activation is freed once read (zoo_nn::grad::no_grad).
    let logits = crate::grad::no_grad(|| model.forward_t(x, false))?;
    let n = y.dim(0)?;
    let loss = (cross_entropy(&logits, y, 0.0)?.to_dtype(DType::F32)? * n as f64)?;
    let hits = correct_on_device(&logits, y)?;
    let flip_hits = match flip {
        true => {
            let mirrored = crate::grad::no_grad(|| model.forward_t(&x.flip(&[3])?, false))?;
            correct_on_device(&(&logits + mirrored)?, y)?
        }
        false => hits.zeros_like()?,
    };
    // Confusion `[true][predicted]` as one-hot(labels)^T one-hot(predictions): labels outside
    // the model's classes have an all-zero row and are left out.
    let truth = y
        .unsqueeze(1)?
        .broadcast_eq(classes)?
        .to_dtype(DType::F32)?;
    let predicted = logits.argmax_keepdim(D::Minus1)?.broadcast_eq(classes)?;
    let confusion = truth.t()?.matmul(&predicted.to_dtype(DType::F32)?)?;
    Ok((Tensor::stack(&[loss, hits, flip_hits], 0)?, confusion))
}

/// What evaluates a model during training: its validation loader, input transform, device and
/// (data-parallel) group.
pub(crate) struct Evaluator<'a> {
    pub model: &'a dyn Model,
    pub loader: &'a Loader,
    pub transform: &'a InputTransform,
    pub device: &'a Device,
    pub dist: Option<&'a dyn Collective>,
    /// Also evaluate with horizontal-flip test-time augmentation.
    pub flip: bool,
}

impl Evaluator<'_> {
    /// An epoch's evaluation: the raw weights, and their EMA when the run keeps one; an error
    /// when either loss is not finite (naming which, and where the last good checkpoint is).
    pub fn epoch(
        &self,
        ema: Option<&Ema>,
        epoch: usize,
        last: &Path,
    ) -> Result<(Evaluation, Option<Evaluation>)> {
        let evaluate = || {
            evaluate_on(
                self.model,
                self.loader,
                self.transform,
                self.device,
                self.dist,
                self.flip,
            )
        };
        let eval = evaluate()?;
        let eval_ema = ema.map(|e| e.with_shadow(evaluate)).transpose()?;
        for (what, e) in std::iter::once(("the weights", &eval))
            .chain(eval_ema.as_ref().map(|e| ("the EMA of the weights", e)))
        {
            if !e.loss.is_finite() {
                candle_core::bail!(
                    "validation loss of {what} is {} after epoch {}: training stopped; {}",
                    e.loss,
                    epoch + 1,
                    super::checkpointer::last_good(last)
                )
            }
        }
        Ok((eval, eval_ema))
    }
}
