//! `zoo show-batch`: the notebook's 6x10 grid of training images with their class names.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use zoo_core::canvas::{BLACK, CHAR_HEIGHT, Canvas, WHITE};
use zoo_core::data::loader::{Loader, LoaderConfig};
use zoo_core::data::resolve::load_split;
use zoo_core::data::{ImageDataset, Split};

/// Draws the first `rows * cols` images of a seeded shuffled epoch, each titled by class.
pub fn batch_grid(
    dataset: Arc<ImageDataset>,
    seed: u64,
    rows: usize,
    cols: usize,
) -> Result<Canvas> {
    let n = rows * cols;
    let loader = Loader::new(
        dataset.clone(),
        LoaderConfig {
            batch_size: n,
            ..LoaderConfig::notebook(seed)
        },
    )?;
    let batch = loader
        .epoch(0, 0)
        .next()
        .context("the dataset has no batch")?;
    let scale = (96 / dataset.height.max(dataset.width)).max(1);
    let (cell_w, cell_h) = (dataset.width * scale, dataset.height * scale);
    let title_h = CHAR_HEIGHT + 6;
    let pad = 8;
    let longest = dataset
        .classes
        .iter()
        .map(|c| Canvas::text_width(c, 1))
        .max()
        .unwrap_or(0);
    let col_w = cell_w.max(longest) + pad;
    let row_h = cell_h + title_h + pad;
    let mut canvas = Canvas::new(cols * col_w + pad, rows * row_h + pad, WHITE);
    let chw = [dataset.channels, dataset.height, dataset.width];
    let per_image = dataset.image_len();
    for (i, label) in batch.labels.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        let x0 = (pad + c * col_w) as isize;
        let y0 = (pad + r * row_h) as isize;
        let title = &dataset.classes[*label as usize];
        let tx = x0 + (cell_w as isize - Canvas::text_width(title, 1) as isize) / 2;
        canvas.text(tx, y0, title, BLACK, 1);
        let image = &batch.images[i * per_image..(i + 1) * per_image];
        canvas.image(x0, y0 + title_h as isize, image, chw, scale);
    }
    Ok(canvas)
}

/// Loads the training split of `dataset` under `root` and writes its grid to `out`.
pub fn show_batch(root: &Path, dataset: &str, seed: u64, out: &Path) -> Result<()> {
    let parsed = zoo_core::data::Dataset::parse(dataset).map_err(anyhow::Error::msg)?;
    let train = load_split(root, &parsed, Split::Train)
        .with_context(|| format!("loading {dataset} from {}", root.display()))?;
    let canvas = batch_grid(Arc::new(train), seed, 6, 10)?;
    canvas
        .save_png(out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
