//! Positions and sizes of the printed mailer, in millimetres and points.
//!
//! Every field has a default (A4, DL window envelope: window 20 mm from the left edge, 45 to
//! 90 mm from the top), and `#[serde(default)]` lets a config file set only what it changes:
//!
//! ```toml
//! [mailer.layout]
//! window_top_mm = 50.0
//! body_font_size = 9.5
//! ```
//!
//! The page is folded in three (99 mm panels) for a DL envelope: the header and the address
//! window sit in the top panel, the code box below the first fold, so nothing but the address
//! shows through the window.

use serde::{Deserialize, Serialize};

/// Layout constants of the printed mailer. Lengths in millimetres, font sizes in points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Layout {
    /// Page width (A4: 210).
    pub page_width_mm: f32,
    /// Page height (A4: 297).
    pub page_height_mm: f32,
    /// Left margin of header, box and body.
    pub margin_left_mm: f32,
    /// Right margin of the body text.
    pub margin_right_mm: f32,
    /// Top of the first header line.
    pub header_top_mm: f32,
    /// Font size of the first header line (bold).
    pub header_title_size: f32,
    /// Font size of the other header lines.
    pub header_font_size: f32,
    /// Envelope window: distance from the left edge of the page.
    pub window_left_mm: f32,
    /// Envelope window: distance of its top from the top of the page.
    pub window_top_mm: f32,
    /// Envelope window width.
    pub window_width_mm: f32,
    /// Envelope window height.
    pub window_height_mm: f32,
    /// Space between the window's edges and the address text.
    pub window_inset_mm: f32,
    /// Font size of the address.
    pub address_font_size: f32,
    /// Top of the code box.
    pub box_top_mm: f32,
    /// Width of the code box (from the left margin).
    pub box_width_mm: f32,
    /// Space inside the box around its text.
    pub box_padding_mm: f32,
    /// Font size of the box title (bold).
    pub box_title_size: f32,
    /// Font size of the box labels.
    pub box_label_size: f32,
    /// Font size of the codes (Courier bold).
    pub box_code_size: f32,
    /// Distance of the code column from the box's left edge.
    pub box_value_offset_mm: f32,
    /// Grey level of the box background (0 black, 1 white).
    pub box_fill_grey: f32,
    /// Border width of the box, in points.
    pub box_border_pt: f32,
    /// Space between the box and the body text.
    pub body_gap_mm: f32,
    /// Font size of the body text.
    pub body_font_size: f32,
    /// Extra space between paragraphs.
    pub paragraph_gap_mm: f32,
    /// Baseline of the last footer line, from the bottom of the page.
    pub footer_bottom_mm: f32,
    /// Font size of the footer.
    pub footer_font_size: f32,
    /// Line height as a multiple of the font size.
    pub line_height: f32,
    /// Print short fold marks at the left edge (99 and 198 mm for a DL fold).
    pub fold_marks: bool,
    /// Print the print facility's marks: the Data Matrix (mailer number and masked serial),
    /// the date and batch line and the inserter (OMR) marks.
    pub facility_marks: bool,
    /// Data Matrix: size of one module (a black or white square).
    pub code_module_mm: f32,
    /// Data Matrix: distance of its right edge from the right edge of the page.
    pub code_right_mm: f32,
    /// Data Matrix: distance of its top from the top of the page.
    pub code_top_mm: f32,
    /// Font size of the date and batch line (beside the Data Matrix).
    pub marks_font_size: f32,
    /// OMR marks: distance of their left end from the left edge of the page.
    pub omr_left_mm: f32,
    /// OMR marks: distance of the first mark from the top of the page.
    pub omr_top_mm: f32,
    /// OMR marks: distance between marks (1/6 inch is usual).
    pub omr_pitch_mm: f32,
    /// OMR marks: length of a mark.
    pub omr_length_mm: f32,
    /// OMR marks: thickness of a mark, in points.
    pub omr_weight_pt: f32,
    /// Show-through guard: grey level of the scramble printed behind the codes (0 black).
    pub guard_grey: f32,
}

impl Default for Layout {
    fn default() -> Layout {
        Layout {
            page_width_mm: 210.0,
            page_height_mm: 297.0,
            margin_left_mm: 20.0,
            margin_right_mm: 20.0,
            header_top_mm: 15.0,
            header_title_size: 12.0,
            header_font_size: 9.0,
            window_left_mm: 20.0,
            window_top_mm: 45.0,
            window_width_mm: 95.0,
            window_height_mm: 45.0,
            window_inset_mm: 5.0,
            address_font_size: 10.0,
            box_top_mm: 108.0,
            box_width_mm: 170.0,
            box_padding_mm: 5.0,
            box_title_size: 10.0,
            box_label_size: 10.0,
            box_code_size: 16.0,
            box_value_offset_mm: 85.0,
            box_fill_grey: 0.92,
            box_border_pt: 1.5,
            body_gap_mm: 10.0,
            body_font_size: 10.0,
            paragraph_gap_mm: 2.5,
            footer_bottom_mm: 12.0,
            footer_font_size: 8.0,
            line_height: 1.3,
            fold_marks: true,
            facility_marks: true,
            code_module_mm: 0.5,
            code_right_mm: 15.0,
            code_top_mm: 12.0,
            marks_font_size: 7.0,
            omr_left_mm: 198.0,
            omr_top_mm: 30.0,
            omr_pitch_mm: 25.4 / 6.0,
            omr_length_mm: 8.0,
            omr_weight_pt: 1.0,
            guard_grey: 0.6,
        }
    }
}

/// Points per millimetre.
pub(crate) const PT_PER_MM: f32 = 72.0 / 25.4;

/// Millimetres to points.
pub(crate) fn pt(mm: f32) -> f32 {
    mm * PT_PER_MM
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_reads_partial_toml_with_defaults() {
        let l: Layout = toml::from_str("window_top_mm = 50.0\nbody_font_size = 9.5\n").unwrap();
        assert_eq!(l.window_top_mm, 50.0);
        assert_eq!(l.body_font_size, 9.5);
        assert_eq!(l.window_left_mm, Layout::default().window_left_mm);
        let e = toml::from_str::<Layout>("windw_top_mm = 1.0").unwrap_err();
        assert!(e.to_string().contains("windw_top_mm"), "{e}");
        let back: Layout = toml::from_str(&toml::to_string(&Layout::default()).unwrap()).unwrap();
        assert_eq!(back, Layout::default());
    }
}
