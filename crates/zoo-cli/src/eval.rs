//! `zoo eval`: a checkpoint's accuracy, per-class accuracy and confusion matrix on a split.

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use zoo_core::data::Split;
use zoo_core::data::loader::{Loader, LoaderConfig};
use zoo_core::data::resolve::load_split;
use zoo_core::table::{Align, Table};
use zoo_core::train::trainer::{Evaluation, evaluate_on};

use crate::loaded_model::{LoadedModel, load_model};

/// Accuracy, per-class accuracy and confusion matrix of a checkpoint on a dataset split; with
/// `flip`, the accuracy of horizontal-flip test-time augmentation too.
pub fn eval_checkpoint(
    checkpoint: &Path,
    data_root: &Path,
    dataset: &str,
    split: Split,
    device: &str,
    flip: bool,
) -> Result<(LoadedModel, Evaluation)> {
    let dataset = zoo_core::data::Dataset::parse(dataset).map_err(anyhow::Error::msg)?;
    if flip {
        crate::run_config::check_flip_allowed(&dataset, "--flip")?;
    }
    let loaded = load_model(checkpoint, device)?;
    let data = load_split(data_root, &dataset, split)?;
    zoo_core::data::resolve::same_classes(
        &loaded.meta.run.classes,
        &data.classes,
        &format!("the checkpoint {}", checkpoint.display()),
        &format!("{dataset} ({})", split.name()),
    )?;
    let loader = Loader::new(
        Arc::new(data),
        LoaderConfig {
            shuffle: false,
            batch_size: 128,
            ..LoaderConfig::notebook(0)
        },
    )?;
    let eval = evaluate_on(
        loaded.model.as_ref(),
        &loader,
        &loaded.meta.run.eval_transform,
        &loaded.device,
        None,
        flip,
    )?;
    Ok((loaded, eval))
}

/// The evaluation as text: accuracy, per-class accuracy, confusion matrix.
pub fn eval_report(classes: &[String], eval: &Evaluation) -> String {
    let name = |i: usize| classes.get(i).map_or("?", |s| s.as_str());
    let flip = eval
        .flip_accuracy
        .map_or(String::new(), |a| format!("  flip-TTA accuracy {a:.4}"));
    let mut out = format!(
        "accuracy {:.4}  loss {:.4}{flip}\n\nper-class accuracy:\n",
        eval.accuracy, eval.loss
    );
    let mut per_class = Table::new(&[
        ("class", Align::Left),
        ("accuracy", Align::Right),
        ("images", Align::Right),
    ]);
    for (i, row) in eval.confusion.iter().enumerate() {
        let total: usize = row.iter().sum();
        per_class.row([
            name(i).to_string(),
            format!("{:.4}", row[i] as f64 / total.max(1) as f64),
            total.to_string(),
        ]);
    }
    out += &per_class.text();
    out += "\nconfusion matrix (rows: true class, columns: predicted):\n";
    let mut columns = vec![(String::new(), Align::Left)];
    columns.extend((0..eval.confusion.len()).map(|i| (i.to_string(), Align::Right)));
    let columns: Vec<(&str, Align)> = columns.iter().map(|(h, a)| (h.as_str(), *a)).collect();
    let mut confusion = Table::new(&columns);
    for (i, row) in eval.confusion.iter().enumerate() {
        let label = format!("{i} {}", name(i).chars().take(10).collect::<String>());
        confusion.row(std::iter::once(label).chain(row.iter().map(|v| v.to_string())));
    }
    out += &confusion.text();
    out
}
