//! How well the show-through guard hides the codes: `cargo run -p dispatch --example
//! guard_check` (needs poppler's `pdftoppm`).
//!
//! Held against a light, a closed envelope shows the code box from behind: mirrored, blurred
//! by the paper, every dark stroke of the front darker. The example renders the same page
//! with two different sets of codes, with and without the guard, draws the code box at
//! 150 dpi in grey, blurs it (a 7-pixel box, about 1.2 mm, for the paper) and prints the
//! signal-to-clutter ratio: how much the two pages differ (what an onlooker could use to tell
//! the digits) against how much the box varies anyway (the strokes the digits hide among).
//! Mirroring changes neither, so it is left out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use dispatch::*;
use std::process::Command;
use std::sync::Arc;

fn render(layout: &Layout, pin: &[u8], puk: &[u8], dir: &std::path::Path, name: &str) -> Vec<f32> {
    let templates = Arc::new(Templates::builtin().unwrap());
    let r = PrintRenderer::new(templates, layout.clone(), Issuer::default());
    let codes = Codes::new(pin, puk).unwrap();
    let part = Plan::Whole(None).cut(&codes).unwrap().swap_remove(0);
    let who = Addressee {
        name: "Niccolò D’Aragona".into(),
        address: vec!["Via Giuseppe Verdi 12".into(), "00185 Roma RM".into()],
    };
    let m = Mailer {
        addressee: &who,
        card_serial: "8038000000002345",
        codes: &part,
        number: Some(7),
    };
    let Rendered::Pdf(pdf) = r.render(&m).unwrap() else {
        panic!("not a pdf")
    };
    let path = dir.join(format!("{name}.pdf"));
    std::fs::write(&path, pdf.expose_secret()).unwrap();
    // The code column of the box (x 100–190 mm, y 108–140 mm at 150 dpi).
    let out = Command::new("pdftoppm")
        .args(["-gray", "-r", "150", "-singlefile"])
        .args(["-x", "590", "-y", "638", "-W", "532", "-H", "190"])
        .arg(&path)
        .arg(dir.join(name))
        .status()
        .expect("pdftoppm (poppler-utils)");
    assert!(out.success());
    let pgm = std::fs::read(dir.join(format!("{name}.pgm"))).unwrap();
    // P5 header: magic, width, height, maxval, then one byte a pixel.
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while pgm[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        while !pgm[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8_lossy(&pgm[start..i]).into_owned());
    }
    let (w, h): (usize, usize) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    let px: Vec<f32> = pgm[i + 1..]
        .iter()
        .map(|b| 1.0 - f32::from(*b) / 255.0)
        .collect();
    blur(&px, w, h, 3)
}

fn blur(px: &[f32], w: usize, h: usize, r: usize) -> Vec<f32> {
    let mut out = vec![0.0; w * h];
    for y in 0..h {
        for x in 0..w {
            let (mut sum, mut n) = (0.0, 0.0);
            for yy in y.saturating_sub(r)..(y + r + 1).min(h) {
                for xx in x.saturating_sub(r)..(x + r + 1).min(w) {
                    sum += px[yy * w + xx];
                    n += 1.0;
                }
            }
            out[y * w + x] = sum / n;
        }
    }
    out
}

fn rms(v: impl Iterator<Item = f32> + Clone) -> f32 {
    let n = v.clone().count() as f32;
    (v.map(|x| x * x).sum::<f32>() / n).sqrt()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let default = Layout::default().guard_grey;
    for grey in [1.0, default, 0.3] {
        let label = if grey >= 1.0 {
            "without guard".to_owned()
        } else {
            format!("guard grey {grey}")
        };
        let layout = &Layout {
            guard_grey: grey,
            ..Layout::default()
        };
        let a = render(layout, b"48213", b"90517364", dir.path(), "a");
        let b = render(layout, b"73950", b"26481935", dir.path(), "b");
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let signal = rms(a.iter().zip(&b).map(|(x, y)| x - y));
        let clutter = rms(a.iter().map(|x| x - mean));
        println!(
            "{label}: mean darkness {mean:.3}, digit signal {signal:.4}, clutter {clutter:.4}, signal/clutter {:.3}",
            signal / clutter
        );
    }
}
