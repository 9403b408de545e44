//! Layer-by-layer summaries: output shapes, parameters and multiply-accumulates, derived
//! analytically (no tensor is pushed through the network).

use candle_core::Result;
use serde::Serialize;

use crate::model::Model;
use crate::table::{Align, Table};

/// One top-level layer of a network.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerSummary {
    pub name: String,
    pub kind: String,
    pub output_shape: Vec<usize>,
    pub params: usize,
    /// Multiply-accumulates of this layer per image.
    pub macs: u64,
}

/// The summary of a network for one input shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub model: String,
    pub input: Vec<usize>,
    pub layers: Vec<LayerSummary>,
    /// Total trainable parameters.
    pub params: usize,
    /// Multiply-accumulates per image (convolutions and linear layers).
    pub macs: u64,
}

impl Summary {
    /// Summarise `model` (registered as `name`) for an `[N, C, H, W]` input.
    pub fn of(name: &str, model: &dyn Model, input: &[usize]) -> Result<Self> {
        let batch = *input.first().unwrap_or(&1);
        if batch == 0 {
            candle_core::bail!("summary: batch size must be at least 1, got input {input:?}")
        }
        let mut shape = input.to_vec();
        let mut layers = Vec::new();
        let mut total_macs = 0u64;
        let body = model.body();
        for (name, layer) in body.names().iter().zip(body.layers()) {
            let macs = layer.macs(&shape)? / batch as u64;
            shape = layer.output_shape(&shape)?;
            total_macs = crate::nn::mac_sum(name, input, &[total_macs, macs])?;
            layers.push(LayerSummary {
                name: name.clone(),
                kind: layer.kind().name().to_string(),
                output_shape: shape.clone(),
                params: layer.num_params(),
                macs,
            });
        }
        Ok(Self {
            model: name.to_string(),
            input: input.to_vec(),
            params: layers.iter().map(|l| l.params).sum(),
            layers,
            macs: total_macs,
        })
    }

    /// The notebook's table (`Conv2d output shape: [128, 96, 54, 54]`), with parameters and
    /// MACs per layer and the totals.
    pub fn table(&self) -> String {
        let shape = |s: &[usize]| {
            format!(
                "[{}]",
                s.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let mut table = Table::new(&[
            ("#", Align::Right),
            ("layer", Align::Left),
            ("output shape", Align::Left),
            ("params", Align::Right),
            ("MACs/image", Align::Right),
        ]);
        for l in &self.layers {
            table.row([
                l.name.clone(),
                l.kind.clone(),
                shape(&l.output_shape),
                group_thousands(l.params as u64),
                group_thousands(l.macs),
            ]);
        }
        let mut out = format!("{} — input {}\n", self.model, shape(&self.input));
        out += &table.text();
        out += &format!(
            "total parameters: {}\nmultiply-accumulates per image: {} ({:.2} GMAC)\n",
            group_thousands(self.params as u64),
            group_thousands(self.macs),
            self.macs as f64 / 1e9
        );
        out
    }
}

/// `1234567` -> `1,234,567`.
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::group_thousands;

    #[test]
    fn thousands() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
        assert_eq!(group_thousands(46787978), "46,787,978");
    }
}
