//! Transforms applied to whole batches on the training device: u8 -> f32 in [0, 1] (`ToTensor`),
//! bilinear `Resize`, `Normalize`. Resizing 32 -> 224 per image on the CPU is the slow part of
//! the notebook's pipeline; here it is two matrix products per batch on the device.

use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};

/// The interpolation matrix `(out, in)` of 1-d bilinear resampling with PyTorch's
/// `align_corners=False` rule: `src = (dst + 0.5) * in / out - 0.5`, clamped at 0.
pub fn bilinear_matrix(in_len: usize, out_len: usize) -> Vec<f32> {
    let mut m = vec![0f32; out_len * in_len];
    let scale = in_len as f64 / out_len as f64;
    for o in 0..out_len {
        let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(in_len - 1);
        let i1 = (i0 + 1).min(in_len - 1);
        let w1 = (src - i0 as f64) as f32;
        m[o * in_len + i0] += 1.0 - w1;
        m[o * in_len + i1] += w1;
    }
    m
}

/// Bilinear resize of `(b, c, h, w)` to `(b, c, out_h, out_w)`, as
/// `F.interpolate(x, size, mode="bilinear", align_corners=False)`; for upsampling (the
/// notebook's 32 -> 224 and 28 -> 224) this is also torchvision's `Resize`, whose antialiasing
/// only acts when shrinking.
pub fn resize_bilinear(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let [b, c, h, w] = x.dims() else {
        candle_core::bail!(
            "resize: expected a (batch, channels, height, width) tensor, got {:?}",
            x.dims()
        )
    };
    let (b, c, h, w) = (*b, *c, *h, *w);
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    let dev = x.device();
    let rh = Tensor::from_vec(bilinear_matrix(h, out_h), (out_h, h), dev)?.to_dtype(x.dtype())?;
    let rw_t = Tensor::from_vec(bilinear_matrix(w, out_w), (out_w, w), dev)?
        .to_dtype(x.dtype())?
        .t()?;
    // rows: [b*c*h, w] x [w, out_w] -> [b, c, h, out_w]
    let y = x
        .reshape((b * c * h, w))?
        .matmul(&rw_t)?
        .reshape((b * c, h, out_w))?;
    // columns: [out_h, h] x [b*c, h, out_w] -> [b, c, out_h, out_w]
    rh.broadcast_left(b * c)?
        .matmul(&y)?
        .reshape((b, c, out_h, out_w))
}

/// `transforms.Normalize(mean, std)` over the channel axis.
pub fn normalize(x: &Tensor, mean: &[f32], std: &[f32]) -> Result<Tensor> {
    let c = x.dim(1)?;
    if mean.len() != c || std.len() != c {
        candle_core::bail!(
            "normalize: {c} channels but {} means and {} standard deviations",
            mean.len(),
            std.len()
        )
    }
    let dev = x.device();
    let mean = Tensor::from_slice(mean, (1, c, 1, 1), dev)?.to_dtype(x.dtype())?;
    let inv_std: Vec<f32> = std.iter().map(|s| 1.0 / s).collect();
    let inv_std = Tensor::from_slice(&inv_std, (1, c, 1, 1), dev)?.to_dtype(x.dtype())?;
    x.broadcast_sub(&mean)?.broadcast_mul(&inv_std)
}

/// The largest image side zoo resizes to (a batch of 128 RGB images of 2048 x 2048 is 6 GiB
/// of f32).
pub const MAX_IMAGE_SIDE: usize = 2048;

/// What turns a u8 batch into the network's input: size and normalisation. A checkpoint
/// carries it so that prediction needs no other flags.
///
/// Two kinds: a plain resize to `height x width` (the notebook's), or, with `resize_shorter`,
/// torchvision's evaluation transform for photos of any size: the shorter side resized to
/// `resize_shorter`, then a centre crop of `height x width` ([`InputTransform::imagenet`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputTransform {
    pub height: usize,
    pub width: usize,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Resize the shorter side to this, then centre-crop `height x width` (`None`: resize the
    /// whole image to `height x width`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_shorter: Option<usize>,
}

/// ImageNet's per-channel mean, as torchvision's weights expect.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation, as torchvision's weights expect.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl InputTransform {
    /// The notebook's transform: resize to `size`, mean 0.5, std 0.5 on every channel.
    pub fn notebook(channels: usize, size: usize) -> Self {
        Self {
            height: size,
            width: size,
            mean: vec![0.5; channels],
            std: vec![0.5; channels],
            resize_shorter: None,
        }
    }

    /// torchvision's ImageNet evaluation transform: `Resize(256)` (bilinear, antialiased),
    /// `CenterCrop(224)`, ImageNet mean and std.
    pub fn imagenet() -> Self {
        Self {
            height: 224,
            width: 224,
            mean: IMAGENET_MEAN.to_vec(),
            std: IMAGENET_STD.to_vec(),
            resize_shorter: Some(256),
        }
    }

    /// One decoded CHW u8 image of `h x w` made ready for [`InputTransform::apply`]: resized and
    /// centre-cropped when the transform resizes the shorter side, unchanged otherwise (the
    /// batch resize then does it). Returns the new size and bytes.
    pub fn prepare_image(
        &self,
        chw: Vec<u8>,
        channels: usize,
        (h, w): (usize, usize),
    ) -> Result<(usize, usize, Vec<u8>)> {
        match self.resize_shorter {
            None => Ok((h, w, chw)),
            Some(s) => {
                let out = (self.height, self.width);
                let bytes = super::resample::resize_then_crop(&chw, channels, (h, w), s, out)?;
                Ok((self.height, self.width, bytes))
            }
        }
    }

    /// Checks that it can be applied to `channels`-channel images: a size of 1 to
    /// [`MAX_IMAGE_SIDE`], one finite mean and one finite, positive std per channel.
    pub fn validate(&self, channels: usize) -> Result<()> {
        for (what, v) in [("height", self.height), ("width", self.width)] {
            if !(1..=MAX_IMAGE_SIDE).contains(&v) {
                candle_core::bail!(
                    "evaluation transform: {what} {v} (expected 1 to {MAX_IMAGE_SIDE})"
                )
            }
        }
        for (what, v) in [("mean", &self.mean), ("std", &self.std)] {
            if v.len() != channels || v.iter().any(|x| !x.is_finite()) {
                candle_core::bail!(
                    "evaluation transform: {what} {v:?} (expected {channels} finite values)"
                )
            }
        }
        if let Some(s) = self.resize_shorter
            && !(self.height.max(self.width)..=MAX_IMAGE_SIDE).contains(&s)
        {
            candle_core::bail!(
                "evaluation transform: resize_shorter {s} (expected {} to {MAX_IMAGE_SIDE}: at \
                 least the crop)",
                self.height.max(self.width)
            )
        }
        if self.std.iter().any(|&s| s <= 0.0) {
            candle_core::bail!(
                "evaluation transform: std {:?} (every value must be above 0)",
                self.std
            )
        }
        Ok(())
    }

    /// u8 `(b, c, h, w)` on any device -> normalised f32 `(b, c, height, width)` on `device`.
    ///
    /// Scaling to [0, 1] and normalising are one affine map per channel, applied before the
    /// resize: bilinear weights sum to one, so the result is the same as normalising after it,
    /// at a fraction of the cost when upsampling 32 -> 224.
    pub fn apply(&self, batch_u8: &Tensor, device: &Device) -> Result<Tensor> {
        let x = batch_u8.to_device(device)?.to_dtype(DType::F32)?;
        let mean: Vec<f32> = self.mean.iter().map(|m| m * 255.0).collect();
        let std: Vec<f32> = self.std.iter().map(|s| s * 255.0).collect();
        let x = normalize(&x, &mean, &std)?;
        resize_bilinear(&x, self.height, self.width)
    }
}
