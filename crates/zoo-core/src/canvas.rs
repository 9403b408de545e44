//! A small RGB canvas for the pictures zoo writes (batch grids, training curves): filled
//! rectangles, lines, upscaled images and text in a built-in 5x7 bitmap font, saved as PNG.

use std::path::Path;

use candle_core::Result;

/// An RGB colour.
pub type Rgb = [u8; 3];

pub const WHITE: Rgb = [255, 255, 255];
pub const BLACK: Rgb = [0, 0, 0];
pub const GREY: Rgb = [200, 200, 200];
pub const RED: Rgb = [214, 39, 40];
pub const BLUE: Rgb = [31, 119, 180];

/// Width of a character cell at scale 1 (5 pixels and a gap).
pub const CHAR_WIDTH: usize = 6;
/// Height of a character at scale 1.
pub const CHAR_HEIGHT: usize = 7;

/// 5x7 glyphs: each row's pixels, leftmost first.
#[rustfmt::skip]
const GLYPHS: &[(char, [&str; 7])] = &[
    ('A', ["01110", "10001", "10001", "11111", "10001", "10001", "10001"]),
    ('B', ["11110", "10001", "10001", "11110", "10001", "10001", "11110"]),
    ('C', ["01110", "10001", "10000", "10000", "10000", "10001", "01110"]),
    ('D', ["11110", "10001", "10001", "10001", "10001", "10001", "11110"]),
    ('E', ["11111", "10000", "10000", "11110", "10000", "10000", "11111"]),
    ('F', ["11111", "10000", "10000", "11110", "10000", "10000", "10000"]),
    ('G', ["01110", "10001", "10000", "10111", "10001", "10001", "01111"]),
    ('H', ["10001", "10001", "10001", "11111", "10001", "10001", "10001"]),
    ('I', ["01110", "00100", "00100", "00100", "00100", "00100", "01110"]),
    ('J', ["00111", "00010", "00010", "00010", "00010", "10010", "01100"]),
    ('K', ["10001", "10010", "10100", "11000", "10100", "10010", "10001"]),
    ('L', ["10000", "10000", "10000", "10000", "10000", "10000", "11111"]),
    ('M', ["10001", "11011", "10101", "10101", "10001", "10001", "10001"]),
    ('N', ["10001", "10001", "11001", "10101", "10011", "10001", "10001"]),
    ('O', ["01110", "10001", "10001", "10001", "10001", "10001", "01110"]),
    ('P', ["11110", "10001", "10001", "11110", "10000", "10000", "10000"]),
    ('Q', ["01110", "10001", "10001", "10001", "10101", "10010", "01101"]),
    ('R', ["11110", "10001", "10001", "11110", "10100", "10010", "10001"]),
    ('S', ["01111", "10000", "10000", "01110", "00001", "00001", "11110"]),
    ('T', ["11111", "00100", "00100", "00100", "00100", "00100", "00100"]),
    ('U', ["10001", "10001", "10001", "10001", "10001", "10001", "01110"]),
    ('V', ["10001", "10001", "10001", "10001", "10001", "01010", "00100"]),
    ('W', ["10001", "10001", "10001", "10101", "10101", "10101", "01010"]),
    ('X', ["10001", "10001", "01010", "00100", "01010", "10001", "10001"]),
    ('Y', ["10001", "10001", "01010", "00100", "00100", "00100", "00100"]),
    ('Z', ["11111", "00001", "00010", "00100", "01000", "10000", "11111"]),
    ('0', ["01110", "10001", "10011", "10101", "11001", "10001", "01110"]),
    ('1', ["00100", "01100", "00100", "00100", "00100", "00100", "01110"]),
    ('2', ["01110", "10001", "00001", "00010", "00100", "01000", "11111"]),
    ('3', ["11111", "00010", "00100", "00010", "00001", "10001", "01110"]),
    ('4', ["00010", "00110", "01010", "10010", "11111", "00010", "00010"]),
    ('5', ["11111", "10000", "11110", "00001", "00001", "10001", "01110"]),
    ('6', ["00110", "01000", "10000", "11110", "10001", "10001", "01110"]),
    ('7', ["11111", "00001", "00010", "00100", "01000", "01000", "01000"]),
    ('8', ["01110", "10001", "10001", "01110", "10001", "10001", "01110"]),
    ('9', ["01110", "10001", "10001", "01111", "00001", "00010", "01100"]),
    ('-', ["00000", "00000", "00000", "11111", "00000", "00000", "00000"]),
    ('/', ["00001", "00001", "00010", "00100", "01000", "10000", "10000"]),
    ('.', ["00000", "00000", "00000", "00000", "00000", "01100", "01100"]),
    (':', ["00000", "01100", "01100", "00000", "01100", "01100", "00000"]),
    ('(', ["00010", "00100", "01000", "01000", "01000", "00100", "00010"]),
    (')', ["01000", "00100", "00010", "00010", "00010", "00100", "01000"]),
    ('%', ["11001", "11010", "00010", "00100", "01000", "01011", "10011"]),
];

/// A character's 5x7 glyph, one byte per row (low 5 bits, most significant = leftmost pixel);
/// blank for a character the table lacks.
fn glyph(ch: char) -> [u8; 7] {
    let upper = ch.to_ascii_uppercase();
    let rows = GLYPHS
        .iter()
        .find(|(c, _)| *c == upper)
        .map_or(["00000"; 7], |(_, rows)| *rows);
    rows.map(|r| u8::from_str_radix(r, 2).unwrap_or(0))
}

/// An RGB image being drawn.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize, background: Rgb) -> Self {
        let mut pixels = Vec::with_capacity(width * height * 3);
        for _ in 0..width * height {
            pixels.extend_from_slice(&background);
        }
        Self {
            width,
            height,
            pixels,
        }
    }

    pub fn set(&mut self, x: isize, y: isize, colour: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.pixels[i..i + 3].copy_from_slice(&colour);
        }
    }

    pub fn get(&self, x: usize, y: usize) -> Rgb {
        let i = (y * self.width + x) * 3;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    pub fn fill_rect(&mut self, x: isize, y: isize, w: usize, h: usize, colour: Rgb) {
        for dy in 0..h as isize {
            for dx in 0..w as isize {
                self.set(x + dx, y + dy, colour);
            }
        }
    }

    /// A line `thickness` pixels wide (Bresenham, thickened as a square brush).
    pub fn line(
        &mut self,
        (x0, y0): (isize, isize),
        (x1, y1): (isize, isize),
        colour: Rgb,
        thickness: usize,
    ) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let half = thickness as isize / 2;
        loop {
            self.fill_rect(
                x - half,
                y - half,
                thickness.max(1),
                thickness.max(1),
                colour,
            );
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text with its top-left corner at (x, y), each font pixel drawn `scale` x `scale`.
    pub fn text(&mut self, x: isize, y: isize, text: &str, colour: Rgb, scale: usize) {
        for (i, ch) in text.chars().enumerate() {
            let gx = x + (i * CHAR_WIDTH * scale) as isize;
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..5 {
                    if bits & (0b10000 >> col) != 0 {
                        let px = gx + (col * scale) as isize;
                        let py = y + (row * scale) as isize;
                        self.fill_rect(px, py, scale, scale, colour);
                    }
                }
            }
        }
    }

    /// Width of `text` in pixels at `scale`.
    pub fn text_width(text: &str, scale: usize) -> usize {
        text.chars().count() * CHAR_WIDTH * scale
    }

    /// Draws a u8 `(c, h, w)` image (1 or 3 channels) with its top-left at (x, y), each pixel
    /// repeated `scale` times.
    pub fn image(&mut self, x: isize, y: isize, chw: &[u8], [c, h, w]: [usize; 3], scale: usize) {
        for iy in 0..h {
            for ix in 0..w {
                let colour = if c == 3 {
                    [
                        chw[iy * w + ix],
                        chw[h * w + iy * w + ix],
                        chw[2 * h * w + iy * w + ix],
                    ]
                } else {
                    let v = chw[iy * w + ix];
                    [v, v, v]
                };
                self.fill_rect(
                    x + (ix * scale) as isize,
                    y + (iy * scale) as isize,
                    scale,
                    scale,
                    colour,
                );
            }
        }
    }

    /// Writes the canvas as PNG, atomically (a temporary file, synced, then renamed).
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let bytes = png_bytes(self.width, self.height, &self.pixels)?;
        crate::fs::write_atomic(path, &bytes)
    }
}

/// `rgb` (row-major, three bytes a pixel) encoded as a PNG file's bytes.
pub fn png_bytes(width: usize, height: usize, rgb: &[u8]) -> Result<Vec<u8>> {
    let img =
        image::RgbImage::from_raw(width as u32, height as u32, rgb.to_vec()).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "PNG of {width}x{height}: {} bytes, expected {}",
                rgb.len(),
                width * height * 3
            ))
        })?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| candle_core::Error::Msg(format!("encoding a PNG: {e}")))?;
    Ok(out.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_draws_the_glyph_pixels() {
        let mut c = Canvas::new(20, 10, WHITE);
        c.text(0, 0, "T1", BLACK, 1);
        // 'T': the whole top row, then the centre column.
        for x in 0..5 {
            assert_eq!(c.get(x, 0), BLACK);
        }
        assert_eq!(c.get(2, 6), BLACK);
        assert_eq!(c.get(0, 6), WHITE);
        // '1' starts one cell to the right: its base row spans columns 1..=3 of the cell.
        assert_eq!(c.get(CHAR_WIDTH + 1, 6), BLACK);
        assert_eq!(Canvas::text_width("abc", 2), 36);
    }

    #[test]
    fn image_is_upscaled_in_chw_order() {
        let mut c = Canvas::new(4, 2, WHITE);
        // 1x2 RGB image: pixel 0 red, pixel 1 blue.
        c.image(0, 0, &[255, 0, 0, 0, 0, 255], [3, 1, 2], 2);
        assert_eq!(c.get(1, 1), [255, 0, 0]);
        assert_eq!(c.get(2, 0), [0, 0, 255]);
    }
}
