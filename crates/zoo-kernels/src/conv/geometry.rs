//! The one description of a convolution: its parameters ([`ConvGeometry`]) and its sizes
//! ([`ConvShape`]), which every path (im2col + GEMM, tiled, Winograd) reads.

use candle_core::Result;

/// Square-kernel convolution geometry (no dilation, one group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    pub stride: usize,
    pub padding: usize,
}

/// One convolution's sizes: `n` images of `c x h x w` through `o` kernels of `k x k` with
/// geometry `g`, giving `o x oh x ow` outputs per image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvShape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub k: usize,
    pub oh: usize,
    pub ow: usize,
    pub g: ConvGeometry,
}

impl ConvShape {
    /// The shape of input dims `x` `(N, C, H, W)` through weight dims `w` `(O, C, k, k)`, or an
    /// error naming `op` and the sizes that do not fit.
    pub(crate) fn new(op: &str, x: &[usize], w: &[usize], g: ConvGeometry) -> Result<Self> {
        let ([n, c, h, wd], [o, ci, kh, kw]) = (x, w) else {
            candle_core::bail!("{op}: expected 4-d input and weight, got {x:?} and {w:?}")
        };
        if c != ci || kh != kw || *kh == 0 || g.stride == 0 {
            candle_core::bail!("{op}: input {x:?} does not fit weight {w:?} ({g:?})")
        }
        let (ph, pw) = (h + 2 * g.padding, wd + 2 * g.padding);
        if ph < *kh || pw < *kw {
            candle_core::bail!("{op}: input {x:?} is smaller than the kernel {kh}x{kw}")
        }
        Ok(Self {
            n: *n,
            c: *c,
            h: *h,
            w: *wd,
            o: *o,
            k: *kh,
            oh: (ph - kh) / g.stride + 1,
            ow: (pw - kw) / g.stride + 1,
            g,
        })
    }

    /// Output positions per image.
    pub(crate) fn positions(&self) -> usize {
        self.oh * self.ow
    }

    /// Input values per image.
    pub(crate) fn in_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// A stride-1 convolution whose output has the input's size (3x3 with padding 1, 1x1, ...).
    pub(crate) fn same_size(&self) -> bool {
        self.g.stride == 1 && self.oh == self.h && self.ow == self.w
    }

    /// The input gradient of a 'same' convolution as a convolution: the output gradient's `o`
    /// channels in, `c` out, on the same maps.
    pub(crate) fn transposed(&self) -> Self {
        Self {
            c: self.o,
            o: self.c,
            ..*self
        }
    }

    /// The output positions `lo..hi` along one axis (`out` outputs over `len` inputs) at which
    /// kernel offset `t` reads inside the input (`0 <= o * stride + t - padding < len`); the
    /// others read padding.
    pub(crate) fn valid_outputs(&self, t: usize, out: usize, len: usize) -> (usize, usize) {
        let g = self.g;
        let lo = g.padding.saturating_sub(t).div_ceil(g.stride).min(out);
        let hi = if len + g.padding > t {
            ((len - 1 + g.padding - t) / g.stride + 1).min(out)
        } else {
            0
        };
        (lo, hi.max(lo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes_and_errors_name_the_op() {
        let g = ConvGeometry {
            stride: 4,
            padding: 1,
        };
        // AlexNet's stem at 224 px: 11x11, stride 4, padding 1 -> 54x54.
        let s = ConvShape::new("conv", &[2, 3, 224, 224], &[96, 3, 11, 11], g).unwrap();
        assert_eq!(
            (s.oh, s.ow, s.positions(), s.in_len()),
            (54, 54, 2916, 3 * 224 * 224)
        );
        let err = ConvShape::new("conv", &[2, 4, 8, 8], &[96, 3, 3, 3], g).unwrap_err();
        assert!(
            err.to_string()
                .contains("conv: input [2, 4, 8, 8] does not fit")
        );
        let err = ConvShape::new("conv", &[2, 3, 4, 4], &[8, 3, 11, 11], g).unwrap_err();
        assert!(err.to_string().contains("smaller than the kernel 11x11"));
    }

    #[test]
    fn valid_outputs_are_those_that_read_inside_the_input() {
        let g = ConvGeometry {
            stride: 1,
            padding: 1,
        };
        let s = ConvShape::new("t", &[1, 1, 4, 4], &[1, 1, 3, 3], g).unwrap();
        assert!(s.same_size());
        // Tap 0 reads padding at output 0; tap 2 at output 3.
        assert_eq!(s.valid_outputs(0, 4, 4), (1, 4));
        assert_eq!(s.valid_outputs(1, 4, 4), (0, 4));
        assert_eq!(s.valid_outputs(2, 4, 4), (0, 3));
        let t = s.transposed();
        assert_eq!((t.c, t.o), (s.o, s.c));
    }
}
