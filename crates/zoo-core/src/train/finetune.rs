//! [`FineTune`]: what a fine-tune of pretrained weights trains: the new head always, the
//! backbone too unless frozen (then left out of the optimiser, its BatchNorm in evaluation
//! mode, as `requires_grad_(False)` plus `.eval()` on the backbone do in PyTorch).

use std::collections::HashSet;

use candle_core::Var;

use crate::model::Model;

/// A fine-tune's split of the parameters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FineTune {
    /// The head's parameter names: the ones whose shapes depend on the number of classes.
    pub head: HashSet<String>,
    /// Train the head alone.
    pub freeze_backbone: bool,
}

impl FineTune {
    /// The parameters the optimiser steps, out of `trainable`: all, or the head's alone with
    /// the backbone frozen (whose BatchNorm `model`'s context then freezes too).
    pub fn prepare(&self, model: &dyn Model, trainable: Vec<(String, Var)>) -> Vec<(String, Var)> {
        model.context().set_batch_norm_frozen(self.freeze_backbone);
        if !self.freeze_backbone {
            return trainable;
        }
        trainable
            .into_iter()
            .filter(|(name, _)| self.head.contains(name))
            .collect()
    }
}
