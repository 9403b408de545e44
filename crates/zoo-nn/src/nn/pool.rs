//! Pooling layers: `MaxPool2d` (with padding and `ceil_mode`) and `AvgPool2d` with padding,
//! `AdaptiveAvgPool2d`.

use candle_core::{Result, Tensor};
use candle_nn::ModuleT;

use super::{Layer, LayerKind};
use crate::export::{Attribute, Graph, Value, pads, pair};
use zoo_kernels::pool::{Pool2dParams, adaptive_avg_pool2d, avg_pool2d, max_pool2d};

/// `[b, c, out(h), out(w)]` for a 4-d `input`, `out` giving one axis' output length.
fn pooled_shape(
    kind: &str,
    input: &[usize],
    out: impl Fn(usize) -> Result<usize>,
) -> Result<Vec<usize>> {
    let [b, c, h, w] = input else {
        candle_core::bail!(
            "{kind}: expected a (batch, channels, height, width) input, got {input:?}"
        )
    };
    let named =
        |e: candle_core::Error| candle_core::Error::Msg(format!("{kind} (input {input:?}): {e}"));
    Ok(vec![
        *b,
        *c,
        out(*h).map_err(named)?,
        out(*w).map_err(named)?,
    ])
}

/// `nn.MaxPool2d(kernel_size, stride, padding)`, and with [`MaxPool2d::ceil_mode`]
/// `ceil_mode=True`.
#[derive(Debug, Clone, Copy)]
pub struct MaxPool2d {
    pub params: Pool2dParams,
    /// `ceil_mode=True`: output lengths round up, so that a last window starting inside the
    /// input or its left padding but running past its end still counts (PyTorch's rule).
    pub ceil_mode: bool,
}

impl MaxPool2d {
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            params: Pool2dParams::new(kernel, stride, padding),
            ceil_mode: false,
        }
    }

    /// The same pooling with `ceil_mode=True` (torchvision's GoogLeNet).
    pub fn ceil_mode(mut self) -> Self {
        self.ceil_mode = true;
        self
    }

    /// Output length along an axis of `len`, and how many `-inf` the far end of that axis
    /// needs for the floor-mode kernel to give that length (0 without `ceil_mode`).
    fn out_len(&self, len: usize) -> Result<(usize, usize)> {
        let p = self.params;
        if !self.ceil_mode {
            return Ok((p.out_len(len)?, 0));
        }
        // The kernel's checks of kernel, stride and padding, on an input it accepts.
        p.out_len(p.kernel)?;
        // PyTorch's `pooling_output_shape`: round up (so an input smaller than the kernel may
        // still give one window), but the last window must start inside the input or its left
        // padding.
        let Some(span) = (len + 2 * p.padding + p.stride - 1).checked_sub(p.kernel) else {
            candle_core::bail!(
                "input size {len} (padded {}) gives no window of the pooling kernel {} in ceil \
                 mode",
                len + 2 * p.padding,
                p.kernel
            )
        };
        let mut out = span / p.stride + 1;
        if (out - 1) * p.stride >= len + p.padding {
            out -= 1;
        }
        let extra = ((out - 1) * p.stride + p.kernel).saturating_sub(len + 2 * p.padding);
        Ok((out, extra))
    }
}

/// `x` with `extra` slices of `-inf` appended along `dim` (never a window's maximum, so no
/// gradient reaches them).
fn pad_neg_inf(x: &Tensor, dim: usize, extra: usize) -> Result<Tensor> {
    if extra == 0 {
        return Ok(x.clone());
    }
    let mut dims = x.dims().to_vec();
    dims[dim] = extra;
    let pad = Tensor::full(f32::NEG_INFINITY, dims, x.device())?.to_dtype(x.dtype())?;
    Tensor::cat(&[x, &pad], dim)
}

impl ModuleT for MaxPool2d {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.output_shape(x.dims())?;
        if !self.ceil_mode {
            return max_pool2d(x, self.params);
        }
        let (_, extra_h) = self.out_len(x.dim(2)?)?;
        let (_, extra_w) = self.out_len(x.dim(3)?)?;
        let x = pad_neg_inf(&pad_neg_inf(x, 2, extra_h)?, 3, extra_w)?;
        max_pool2d(&x, self.params)
    }
}

impl Layer for MaxPool2d {
    fn kind(&self) -> LayerKind {
        LayerKind::MaxPool2d
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        pooled_shape("MaxPool2d", input, |len| Ok(self.out_len(len)?.0))
    }
    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let shape = self.output_shape(&input.shape)?;
        let p = self.params;
        let attributes = vec![
            ("kernel_shape", pair(p.kernel)),
            ("strides", pair(p.stride)),
            ("pads", pads(p.padding)),
            ("ceil_mode", Attribute::Int(self.ceil_mode.into())),
        ];
        Ok(graph.node("MaxPool", "", vec![input.name.clone()], attributes, shape))
    }

    fn num_params(&self) -> usize {
        0
    }
}

/// `nn.AvgPool2d(kernel_size, stride, padding)` (padding counted in the divisor).
#[derive(Debug, Clone, Copy)]
pub struct AvgPool2d {
    pub params: Pool2dParams,
}

impl AvgPool2d {
    pub fn new(kernel: usize, stride: usize, padding: usize) -> Self {
        Self {
            params: Pool2dParams::new(kernel, stride, padding),
        }
    }
}

impl ModuleT for AvgPool2d {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.output_shape(x.dims())?;
        avg_pool2d(x, self.params)
    }
}

impl Layer for AvgPool2d {
    fn kind(&self) -> LayerKind {
        LayerKind::AvgPool2d
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        pooled_shape("AvgPool2d", input, |len| self.params.out_len(len))
    }
    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let shape = self.output_shape(&input.shape)?;
        let p = self.params;
        let attributes = vec![
            ("kernel_shape", pair(p.kernel)),
            ("strides", pair(p.stride)),
            ("pads", pads(p.padding)),
            ("count_include_pad", Attribute::Int(1)),
        ];
        Ok(graph.node(
            "AveragePool",
            "",
            vec![input.name.clone()],
            attributes,
            shape,
        ))
    }

    fn num_params(&self) -> usize {
        0
    }
}

/// `nn.AdaptiveAvgPool2d((out_h, out_w))`.
#[derive(Debug, Clone, Copy)]
pub struct AdaptiveAvgPool2d {
    pub out_h: usize,
    pub out_w: usize,
}

impl AdaptiveAvgPool2d {
    pub fn new(out_h: usize, out_w: usize) -> Self {
        Self { out_h, out_w }
    }
}

impl ModuleT for AdaptiveAvgPool2d {
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        self.output_shape(x.dims())?;
        adaptive_avg_pool2d(x, self.out_h, self.out_w)
    }
}

impl Layer for AdaptiveAvgPool2d {
    fn kind(&self) -> LayerKind {
        LayerKind::AdaptiveAvgPool2d
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        match input {
            [b, c, h, w] if *h > 0 && *w > 0 => Ok(vec![*b, *c, self.out_h, self.out_w]),
            _ => candle_core::bail!(
                "AdaptiveAvgPool2d: expected a non-empty (batch, channels, height, width) input, \
                 got {input:?}"
            ),
        }
    }
    /// ONNX has no adaptive pooling: global pooling, the identity when the map already has
    /// the output size, a plain average pooling when it is a multiple of it; refused otherwise.
    fn export(&self, graph: &mut Graph, input: &Value) -> Result<Value> {
        let shape = self.output_shape(&input.shape)?;
        let (h, w) = (input.shape[2], input.shape[3]);
        let (oh, ow) = (self.out_h, self.out_w);
        let x = vec![input.name.clone()];
        if (oh, ow) == (1, 1) {
            return Ok(graph.node("GlobalAveragePool", "", x, vec![], shape));
        }
        if (h, w) == (oh, ow) {
            return Ok(input.clone());
        }
        if h % oh != 0 || w % ow != 0 {
            candle_core::bail!(
                "AdaptiveAvgPool2d(({oh}, {ow})) on a {h}x{w} map: ONNX has no adaptive pooling, \
                 and {h}x{w} is not a multiple of {oh}x{ow}; export at an input size where it is \
                 (224 px for torchvision's AlexNet and VGG)"
            )
        }
        let kernel = Attribute::Ints(vec![(h / oh) as i64, (w / ow) as i64]);
        let attributes = vec![("kernel_shape", kernel.clone()), ("strides", kernel)];
        Ok(graph.node("AveragePool", "", x, attributes, shape))
    }

    fn num_params(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    // From `scripts/pool_reference.py` (torch 2.15.0): x[i] = ((i * 37) % 23) / 7 - 1.5,
    // upstream gradient g[j] = 0.1 * (j + 1);
    // `F.max_pool2d(x, 3, 2, 1, ceil_mode=True)`, input [1, 2, 7, 8] -> [1, 2, 4, 5].
    const MAX_3_2_1_CEIL_OUT: &[f32] = &[
        1.35714, 1.21429, 1.5, 1.5, -0.642857, 1.35714, 1.64286, 1.5, 1.5, 1.35714, 1.64286,
        1.64286, 1.5, 1.35714, 1.35714, 1.64286, 1.64286, 1.07143, 1.35714, 0.5, 1.64286, 1.5, 1.5,
        0.928571, -0.357143, 1.64286, 1.5, 1.35714, 1.64286, 1.64286, 0.785714, 1.5, 1.35714,
        1.64286, 1.64286, 1.5, 1.5, 1.35714, 1.64286, 0.785714,
    ];
    const MAX_3_2_1_CEIL_GRAD: &[f32] = &[
        0.0, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.5, 0.7, 0.0, 0.0, 0.0, 0.0, 2.4, 0.0, 0.0, 0.0, 0.0,
        0.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.9, 0.0, 0.0, 0.0, 0.0,
        1.3, 0.0, 0.0, 0.0, 0.0, 5.6, 0.0, 0.0, 1.8, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        1.9, 0.0, 0.0, 0.0, 0.0, 4.5, 0.0, 0.0, 2.4, 2.5, 4.7, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 2.8, 0.0, 0.0, 3.1, 0.0, 5.9, 0.0, 0.0, 0.0, 0.0, 12.8, 0.0, 0.0,
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.1, 0.0, 0.0, 4.0, 0.0, 7.3, 0.0, 0.0,
        0.0, 0.0, 3.9, 0.0,
    ];
    // `F.max_pool2d(x, 3, 3, 0, ceil_mode=True)`, input [1, 1, 4, 5] -> [1, 1, 2, 2].
    const MAX_3_3_0_CEIL_OUT: &[f32] = &[0.785714, 1.5, 0.928571, 1.64286];
    const MAX_3_3_0_CEIL_GRAD: &[f32] = &[
        0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.0, 0.2, 0.0, 0.0, 0.3, 0.0,
        0.4, 0.0,
    ];

    fn close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{what}[{i}]: {g}, PyTorch {w}"
            );
        }
    }

    #[test]
    fn ceil_mode_max_pool_matches_pytorch() -> Result<()> {
        for (shape, pool, out, grad) in [
            (
                [1, 2, 7, 8],
                MaxPool2d::new(3, 2, 1).ceil_mode(),
                MAX_3_2_1_CEIL_OUT,
                MAX_3_2_1_CEIL_GRAD,
            ),
            (
                [1, 1, 4, 5],
                MaxPool2d::new(3, 3, 0).ceil_mode(),
                MAX_3_3_0_CEIL_OUT,
                MAX_3_3_0_CEIL_GRAD,
            ),
        ] {
            let n: usize = shape.iter().product();
            let x: Vec<f32> = (0..n)
                .map(|i| (((i * 37) % 23) as f64 / 7.0 - 1.5) as f32)
                .collect();
            let x = Var::from_tensor(&Tensor::from_vec(x, &shape[..], &Device::Cpu)?)?;
            let y = pool.forward_t(x.as_tensor(), true)?;
            assert_eq!(y.dims(), pool.output_shape(&shape)?.as_slice());
            let g: Vec<f32> = (0..y.elem_count()).map(|j| 0.1 * (j + 1) as f32).collect();
            let g = Tensor::from_vec(g, y.shape(), &Device::Cpu)?;
            let grads = (&y * &g)?.sum_all()?.backward()?;
            let dx = grads
                .get(x.as_tensor())
                .expect("a gradient reaches the input");
            close("ceil-mode max", &y.flatten_all()?.to_vec1()?, out);
            close("its gradient", &dx.flatten_all()?.to_vec1()?, grad);
        }
        Ok(())
    }

    #[test]
    fn ceil_mode_lengths_follow_pytorch() -> Result<()> {
        // (len, kernel, stride, padding) -> PyTorch's output length with ceil_mode=True, and
        // without (`F.max_pool2d(torch.zeros(1, 1, L, L), k, s, p, ceil_mode=...)`).
        for ((len, k, s, p), ceil, floor) in [
            ((7, 3, 2, 1), 4, 4),
            ((8, 3, 2, 1), 5, 4),
            ((5, 2, 2, 1), 3, 3),
            ((112, 3, 2, 0), 56, 55),
            ((50, 3, 2, 0), 25, 24),
            ((25, 3, 2, 0), 12, 12),
            ((3, 2, 2, 0), 2, 1),
            ((5, 3, 1, 1), 5, 5),
            ((6, 3, 3, 1), 3, 2),
            ((4, 3, 3, 0), 2, 1),
            ((10, 4, 3, 2), 4, 4),
        ] {
            let shape = [1, 1, len, len];
            let pool = MaxPool2d::new(k, s, p);
            assert_eq!(pool.output_shape(&shape)?, [1, 1, floor, floor]);
            let pool = pool.ceil_mode();
            assert_eq!(
                pool.output_shape(&shape)?,
                [1, 1, ceil, ceil],
                "{len} {k} {s} {p}"
            );
            let y = pool.forward_t(
                &Tensor::zeros(&shape[..], candle_core::DType::F32, &Device::Cpu)?,
                false,
            )?;
            assert_eq!(y.dims(), [1, 1, ceil, ceil]);
        }
        // Inputs smaller than the kernel: one window in ceil mode where PyTorch gives one.
        for ((len, k, s, p), ceil) in [
            ((1, 2, 2, 0), Some(1)),
            ((2, 3, 2, 0), Some(1)),
            ((1, 3, 3, 0), Some(1)),
            ((1, 3, 2, 0), None),
            ((2, 5, 3, 0), None),
            ((1, 2, 1, 0), None),
        ] {
            let shape = [1, 1, len, len];
            let pool = MaxPool2d::new(k, s, p);
            assert!(pool.output_shape(&shape).is_err());
            match ceil {
                Some(n) => {
                    assert_eq!(pool.ceil_mode().output_shape(&shape)?, [1, 1, n, n]);
                    let x = Tensor::ones(&shape[..], candle_core::DType::F32, &Device::Cpu)?;
                    let y = pool.ceil_mode().forward_t(&x, false)?;
                    assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, vec![1.0; n * n]);
                }
                None => assert!(pool.ceil_mode().output_shape(&shape).is_err()),
            }
        }
        Ok(())
    }
}
