//! Training augmentations on u8 CHW images (run on the loader's worker thread): random crop
//! with zero padding and random horizontal flip, from a seeded generator.

use serde::{Deserialize, Serialize};

use crate::rng::ZooRng;

/// Which augmentations to apply to training images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Augment {
    /// `RandomCrop(size, padding)`: pad by this many zero pixels, crop back at a random offset.
    pub crop_padding: Option<usize>,
    /// `RandomHorizontalFlip(0.5)`.
    pub hflip: bool,
}

impl Augment {
    /// No augmentation.
    pub const NONE: Self = Self {
        crop_padding: None,
        hflip: false,
    };
    /// The CIFAR recipe: `RandomCrop(32, padding=4)` and `RandomHorizontalFlip()`.
    pub const CROP_FLIP: Self = Self {
        crop_padding: Some(4),
        hflip: true,
    };

    /// Training augmentation for a dataset: random crop with 4 pixels of padding, plus a
    /// horizontal flip where mirrored images are still of their class (not for digits).
    pub fn for_dataset(dataset: &super::Dataset) -> Self {
        Self {
            hflip: !dataset.is_digits(),
            ..Self::CROP_FLIP
        }
    }

    pub fn is_none(&self) -> bool {
        self.crop_padding.is_none() && !self.hflip
    }

    /// Applies the augmentations to one `(c, h, w)` image in place.
    pub fn apply(
        &self,
        image: &mut [u8],
        [c, h, w]: [usize; 3],
        rng: &mut ZooRng,
        scratch: &mut Vec<u8>,
    ) {
        if let Some(pad) = self.crop_padding.filter(|&p| p > 0) {
            let dy = rng.below(2 * pad as u64 + 1) as isize - pad as isize;
            let dx = rng.below(2 * pad as u64 + 1) as isize - pad as isize;
            random_shift(image, [c, h, w], dy, dx, scratch);
        }
        if self.hflip && rng.uniform_f32() < 0.5 {
            for row in image.chunks_exact_mut(w) {
                row.reverse();
            }
        }
    }
}

/// Output pixel (y, x) = input (y + dy, x + dx), zero outside: a crop of the zero-padded image.
fn random_shift(
    image: &mut [u8],
    [c, h, w]: [usize; 3],
    dy: isize,
    dx: isize,
    scratch: &mut Vec<u8>,
) {
    scratch.clear();
    scratch.extend_from_slice(image);
    image.fill(0);
    for ch in 0..c {
        for y in 0..h {
            let sy = y as isize + dy;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            for x in 0..w {
                let sx = x as isize + dx;
                if sx >= 0 && sx < w as isize {
                    image[(ch * h + y) * w + x] = scratch[(ch * h + sy as usize) * w + sx as usize];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_is_a_crop_of_the_padded_image() {
        // 1x3x3 image 1..9, shifted by (dy, dx) = (1, -1): out(y, x) = in(y + 1, x - 1).
        let mut img: Vec<u8> = (1..=9).collect();
        random_shift(&mut img, [1, 3, 3], 1, -1, &mut Vec::new());
        assert_eq!(img, vec![0, 4, 5, 0, 7, 8, 0, 0, 0]);
    }

    #[test]
    fn augment_is_seeded_and_flip_reverses_rows() {
        let aug = Augment {
            crop_padding: None,
            hflip: true,
        };
        let base: Vec<u8> = (0..12).collect();
        let mut flips = 0;
        let mut rng = ZooRng::new(1);
        for _ in 0..200 {
            let mut img = base.clone();
            aug.apply(&mut img, [1, 3, 4], &mut rng, &mut Vec::new());
            if img != base {
                assert_eq!(img, vec![3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8]);
                flips += 1;
            }
        }
        assert!((70..130).contains(&flips), "{flips} flips of 200");
        let crop = Augment::CROP_FLIP;
        let run = |seed| {
            let mut img: Vec<u8> = (0..48).collect();
            crop.apply(&mut img, [3, 4, 4], &mut ZooRng::new(seed), &mut Vec::new());
            img
        };
        assert_eq!(run(5), run(5));
    }
}
