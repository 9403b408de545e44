//! Tables for people: one builder that renders as markdown (reports, docs) or as aligned text
//! (the terminal), so that no caller pads columns or writes `|---:|` rows by hand.

/// How a column's cells line up: text to the left, numbers to the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Rows of cells under a header.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            header: columns.iter().map(|(h, _)| h.to_string()).collect(),
            align: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped (the header decides).
    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        let mut row: Vec<String> = cells.into_iter().map(|c| c.to_string()).collect();
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// GitHub markdown: `| a | b |`, an alignment row (`---` or `---:`), one line per row.
    pub fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let rule: Vec<String> = self
            .align
            .iter()
            .map(|a| match a {
                Align::Left => "---".to_string(),
                Align::Right => "---:".to_string(),
            })
            .collect();
        let mut out = line(&self.header) + &format!("|{}|\n", rule.join("|"));
        for row in &self.rows {
            out += &line(row);
        }
        out
    }

    /// Columns padded to their widest cell (in characters), two spaces apart, no trailing
    /// spaces.
    pub fn text(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .zip(&self.align)
                .map(|((cell, &w), align)| {
                    let pad = " ".repeat(w - width(cell));
                    match align {
                        Align::Left => format!("{cell}{pad}"),
                        Align::Right => format!("{pad}{cell}"),
                    }
                })
                .collect();
            padded.join("  ").trim_end().to_string() + "\n"
        };
        let mut out = line(&self.header);
        for row in &self.rows {
            out += &line(row);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(&[("model", Align::Left), ("params", Align::Right)]);
        t.row(["resnet18", "11,184,650"]).row(["nin", "2,015,398"]);
        t
    }

    #[test]
    fn markdown_has_an_alignment_row_and_one_line_per_row() {
        assert_eq!(
            sample().markdown(),
            "| model | params |\n|---|---:|\n| resnet18 | 11,184,650 |\n| nin | 2,015,398 |\n"
        );
    }

    #[test]
    fn text_pads_left_and_right_aligned_columns() {
        assert_eq!(
            sample().text(),
            "model         params\nresnet18  11,184,650\nnin        2,015,398\n"
        );
        // Cells are counted in characters, and a short row is filled with empty cells.
        let mut t = Table::new(&[("a", Align::Left), ("b", Align::Right)]);
        t.row(["é"]);
        assert_eq!(t.text(), "a  b\né\n");
    }
}
