//! Resize-then-crop on decoded u8 images, as torchvision's `Resize(s)` + `CenterCrop(c)` do on a
//! PIL image: the shorter side to `s` (the longer one truncated in proportion), Pillow's
//! antialiased bilinear filter with its fixed-point rounding (horizontal pass, then vertical,
//! each rounded to u8), then the centre crop with Python's rounding of the offsets.

use candle_core::Result;

/// Pillow's fixed-point precision for 8-bit images (`PRECISION_BITS` in Resample.c).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One output pixel's taps: the first input index and the fixed-point weights.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// Pillow's bilinear coefficients for `in_len -> out_len` (`precompute_coeffs` with the
/// triangle filter, support scaled by the shrink factor, normalised, then fixed point).
fn taps(in_len: usize, out_len: usize) -> Vec<Taps> {
    let scale = in_len as f64 / out_len as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale;
    (0..out_len)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let first = ((center - support + 0.5) as isize).max(0) as usize;
            let last = ((center + support + 0.5) as usize).min(in_len);
            let raw: Vec<f64> = (first..last)
                .map(|i| (1.0 - ((i as f64 - center + 0.5) / filter_scale).abs()).max(0.0))
                .collect();
            let total: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let fixed = w * (1u32 << PRECISION_BITS) as f64;
                    (if fixed < 0.0 {
                        fixed - 0.5
                    } else {
                        fixed + 0.5
                    }) as i32
                })
                .collect();
            Taps { first, weights }
        })
        .collect()
}

/// One output value from input values `at(i)`, rounded and clamped as Pillow's `clip8`.
fn filtered(taps: &Taps, at: impl Fn(usize) -> u8) -> u8 {
    let mut sum: i64 = 1 << (PRECISION_BITS - 1);
    for (k, &w) in taps.weights.iter().enumerate() {
        sum += at(taps.first + k) as i64 * w as i64;
    }
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes a CHW u8 image `(channels, h, w)` to `(channels, out_h, out_w)` as Pillow's
/// `Image.resize(..., BILINEAR)`: antialiased when shrinking, u8 after each pass.
pub fn resize_u8(
    chw: &[u8],
    channels: usize,
    (h, w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<u8> {
    let mut plane = chw.to_vec();
    let mut width = w;
    if out_w != w {
        let across = taps(w, out_w);
        plane = (0..channels * h)
            .flat_map(|row| {
                let src = &chw[row * w..(row + 1) * w];
                across.iter().map(move |t| filtered(t, |i| src[i]))
            })
            .collect();
        width = out_w;
    }
    if out_h == h {
        return plane;
    }
    let down = taps(h, out_h);
    let mut out = Vec::with_capacity(channels * out_h * width);
    for c in 0..channels {
        let src = &plane[c * h * width..(c + 1) * h * width];
        for t in &down {
            out.extend((0..width).map(|x| filtered(t, |i| src[i * width + x])));
        }
    }
    out
}

/// torchvision's `Resize(shorter)` output size for an `h x w` image: the shorter side becomes
/// `shorter`, the longer one `int(shorter * long / short)`.
pub fn shorter_side_size(h: usize, w: usize, shorter: usize) -> (usize, usize) {
    if h <= w {
        (shorter, shorter * w / h)
    } else {
        (shorter * h / w, shorter)
    }
}

/// Python's `int(round(x / 2))` for a non-negative integer `x` (ties to even).
fn half_rounded(x: usize) -> usize {
    let (q, odd) = (x / 2, x % 2 == 1);
    if odd && q % 2 == 1 { q + 1 } else { q }
}

/// torchvision's `CenterCrop((out_h, out_w))` of a CHW u8 image; an error when the image is
/// smaller than the crop.
pub fn center_crop_u8(
    chw: &[u8],
    channels: usize,
    (h, w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Result<Vec<u8>> {
    if out_h > h || out_w > w {
        candle_core::bail!("centre crop {out_w}x{out_h}: the image is only {w}x{h}")
    }
    let (top, left) = (half_rounded(h - out_h), half_rounded(w - out_w));
    let mut out = Vec::with_capacity(channels * out_h * out_w);
    for c in 0..channels {
        for y in top..top + out_h {
            let row = (c * h + y) * w;
            out.extend_from_slice(&chw[row + left..row + left + out_w]);
        }
    }
    Ok(out)
}

/// `Resize(shorter)` then `CenterCrop((out_h, out_w))` of a CHW u8 image.
pub fn resize_then_crop(
    chw: &[u8],
    channels: usize,
    (h, w): (usize, usize),
    shorter: usize,
    (out_h, out_w): (usize, usize),
) -> Result<Vec<u8>> {
    if h == 0 || w == 0 || chw.len() != channels * h * w {
        candle_core::bail!(
            "resize: a {channels}x{h}x{w} image needs {} bytes, got {}",
            channels * h * w,
            chw.len()
        )
    }
    let size = shorter_side_size(h, w, shorter);
    let resized = resize_u8(chw, channels, (h, w), size);
    center_crop_u8(&resized, channels, size, (out_h, out_w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsampling_taps_are_pytorchs_bilinear_weights() {
        // 2 -> 4: output centres at 0.25, 0.75, 1.25, 1.75 in input pixels (minus 0.5):
        // weights (1, 0), (0.75, 0.25), (0.25, 0.75), (0, 1).
        let t = taps(2, 4);
        let one = (1u32 << PRECISION_BITS) as f64;
        let w = |o: usize| -> Vec<f64> { t[o].weights.iter().map(|&k| k as f64 / one).collect() };
        assert_eq!((t[0].first, w(0)), (0, vec![1.0]));
        assert_eq!((t[1].first, w(1)), (0, vec![0.75, 0.25]));
        assert_eq!((t[2].first, w(2)), (0, vec![0.25, 0.75]));
        assert_eq!((t[3].first, w(3)), (1, vec![1.0]));
    }

    #[test]
    fn shrinking_by_two_averages_pairs_with_quarter_neighbours() {
        // 8 -> 4: support 2 input pixels each side, triangle of width 2: taps 1/8, 3/8, 3/8, 1/8.
        let row: Vec<u8> = vec![0, 0, 80, 80, 160, 160, 240, 240];
        let out = resize_u8(&row, 1, (1, 8), (1, 4));
        // Pixel 1: inputs 1..5 = 0, 80, 80, 160 -> 0/8 + 240/8 + 240/8 + 160/8 = 80.
        assert_eq!(out[1], 80);
        // Pixel 0 drops the missing left tap and renormalises: (0*3 + 0*3 + 80) / 7 = 11.43.
        assert_eq!(out[0], 11);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn a_constant_image_stays_constant_at_any_size() {
        let img = vec![173u8; 3 * 37 * 53];
        let out = resize_then_crop(&img, 3, (37, 53), 29, (24, 24)).unwrap();
        assert_eq!(out.len(), 3 * 24 * 24);
        assert!(out.iter().all(|&v| v == 173));
    }

    #[test]
    fn sizes_and_crops_follow_torchvision() {
        // 500x375 (w x h) photo: shorter side 256 -> 341x256 (int(256*500/375) = 341).
        assert_eq!(shorter_side_size(375, 500, 256), (256, 341));
        assert_eq!(shorter_side_size(500, 375, 256), (341, 256));
        // CenterCrop offsets use Python's round: (341-224)/2 = 58.5 -> 58, (259-224)/2 = 17.5 -> 18.
        assert_eq!(half_rounded(341 - 224), 58);
        assert_eq!(half_rounded(259 - 224), 18);
        let img: Vec<u8> = (0..5 * 4).map(|v| v as u8).collect();
        // 4 rows x 5 columns, crop 2x2: top round(1.0) = 1, left round(1.5) = 2.
        let crop = center_crop_u8(&img, 1, (4, 5), (2, 2)).unwrap();
        assert_eq!(crop, vec![7, 8, 12, 13]);
        let err = center_crop_u8(&img, 1, (4, 5), (6, 2)).unwrap_err();
        assert!(err.to_string().contains("only 5x4"), "{err}");
    }
}
