//! The live router view: one column per generated token, and per MoxE layer one row for the
//! difficulty d_t and one row per expert, coloured by the weight the router gave it (blue:
//! the mLSTM group, experts 0..E/2; orange: the sLSTM group). Hovering a column shows the
//! token's numbers.

use eframe::egui::{self, Color32, Rect, Sense, Stroke, Vec2};

use crate::worker::LayerRouting;

/// Cell size in points.
const CELL: f32 = 11.0;
/// Gap between layers, in cells.
const LAYER_GAP: f32 = 0.6;

/// One generated token's column: its text and, once the model has read it, its routing.
pub struct Column {
    pub text: String,
    pub layers: Option<Vec<LayerRouting>>,
}

fn mix(a: Color32, b: Color32, t: f32) -> Color32 {
    let t = t.clamp(0.0, 1.0);
    let l = |x: u8, y: u8| (x as f32 + (y as f32 - x as f32) * t).round() as u8;
    Color32::from_rgb(l(a.r(), b.r()), l(a.g(), b.g()), l(a.b(), b.b()))
}

const EMPTY: Color32 = Color32::from_rgb(28, 30, 36);
const MLSTM: Color32 = Color32::from_rgb(70, 150, 255);
const SLSTM: Color32 = Color32::from_rgb(255, 150, 50);
const DIFFICULTY: Color32 = Color32::from_rgb(220, 80, 200);

/// Draws the grid of `columns` for a model of `layers` MoxE layers of `experts` experts: the
/// row labels stay in place while the cells scroll (following the newest token).
pub fn show(ui: &mut egui::Ui, columns: &[Column], layers: usize, experts: usize) {
    let rows_per_layer = experts as f32 + 1.0;
    let height = layers as f32 * (rows_per_layer + LAYER_GAP) * CELL;
    let layer_top = |l: usize| l as f32 * (rows_per_layer + LAYER_GAP) * CELL;
    ui.horizontal_top(|ui| {
        let (labels, _) = ui.allocate_exact_size(Vec2::new(44.0, height), Sense::hover());
        let painter = ui.painter_at(labels);
        let font = egui::FontId::monospace(9.0);
        let colour = ui.visuals().text_color();
        for l in 0..layers {
            let top = labels.top() + layer_top(l);
            let label = |row: f32, s: String| {
                painter.text(
                    egui::pos2(labels.left(), top + (row + 0.5) * CELL),
                    egui::Align2::LEFT_CENTER,
                    s,
                    font.clone(),
                    colour,
                );
            };
            label(0.0, format!("L{l} d_t"));
            for e in 0..experts {
                label(1.0 + e as f32, format!("  e{e}"));
            }
        }
        egui::ScrollArea::horizontal()
            .stick_to_right(true)
            .auto_shrink([false, true])
            .show(ui, |ui| {
                grid(ui, columns, layers, experts, height, layer_top)
            });
    });
}

fn grid(
    ui: &mut egui::Ui,
    columns: &[Column],
    layers: usize,
    experts: usize,
    height: f32,
    layer_top: impl Fn(usize) -> f32,
) {
    let width = columns.len().max(1) as f32 * CELL;
    let (rect, response) = ui.allocate_exact_size(Vec2::new(width, height), Sense::hover());
    let painter = ui.painter_at(rect);
    for l in 0..layers {
        let top = rect.top() + layer_top(l);
        for (t, col) in columns.iter().enumerate() {
            let x = rect.left() + t as f32 * CELL;
            let cell = |row: f32, colour: Color32| {
                let r =
                    Rect::from_min_size(egui::pos2(x, top + row * CELL), Vec2::splat(CELL - 1.0));
                painter.rect_filled(r, 1.0, colour);
            };
            let Some(routing) = col.layers.as_ref().and_then(|ls| ls.get(l)) else {
                for row in 0..=experts {
                    cell(row as f32, EMPTY);
                }
                continue;
            };
            cell(0.0, mix(EMPTY, DIFFICULTY, routing.difficulty));
            for e in 0..experts {
                let weight = routing
                    .experts
                    .iter()
                    .find(|(id, _)| *id as usize == e)
                    .map(|&(_, w)| w);
                let hue = if e < experts / 2 { MLSTM } else { SLSTM };
                // A chosen expert is at least faintly lit, whatever its weight.
                let colour = weight.map_or(EMPTY, |w| mix(EMPTY, hue, 0.25 + 0.75 * w));
                cell(1.0 + e as f32, colour);
            }
        }
    }
    if let Some(pos) = response.hover_pos() {
        let t = ((pos.x - rect.left()) / CELL).floor();
        if t >= 0.0 && (t as usize) < columns.len() {
            let t = t as usize;
            let x = rect.left() + t as f32 * CELL;
            painter.rect_stroke(
                Rect::from_min_size(
                    egui::pos2(x - 1.0, rect.top()),
                    Vec2::new(CELL + 1.0, height),
                ),
                0.0,
                Stroke::new(1.0, Color32::WHITE),
                egui::StrokeKind::Outside,
            );
            response.on_hover_ui_at_pointer(|ui| details(ui, t, &columns[t]));
        }
    }
}

/// The numbers of token `t`.
fn details(ui: &mut egui::Ui, t: usize, col: &Column) {
    ui.label(egui::RichText::new(format!("token {t}: {:?}", col.text)).strong());
    match &col.layers {
        None => {
            ui.label("not read by the model yet (the last token of a generation)");
        }
        Some(layers) => {
            for (l, r) in layers.iter().enumerate() {
                let experts: Vec<String> = r
                    .experts
                    .iter()
                    .map(|(e, w)| format!("e{e} {w:.3}"))
                    .collect();
                ui.monospace(format!(
                    "layer {l}: d_t {:.3}  entropy {:.3}  experts {}",
                    r.difficulty,
                    r.entropy,
                    experts.join(", ")
                ));
            }
        }
    }
}
