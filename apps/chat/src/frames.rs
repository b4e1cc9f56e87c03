//! Frame timing while the engine generates, and the screenshot file.

use std::io::BufWriter;
use std::path::Path;
use std::time::Instant;

use eframe::egui::ColorImage;

/// Intervals between consecutive frames drawn while a generation runs.
#[derive(Default)]
pub struct FrameClock {
    running: bool,
    last: Option<Instant>,
    intervals_ms: Vec<f64>,
    frames: usize,
}

impl FrameClock {
    /// A generation began: count its frames from now.
    pub fn start(&mut self) {
        self.running = true;
        self.last = None;
        self.intervals_ms.clear();
        self.frames = 0;
    }

    pub fn stop(&mut self) {
        self.running = false;
    }

    /// A frame is being drawn at `now`.
    pub fn tick(&mut self, now: Instant) {
        if !self.running {
            return;
        }
        self.frames += 1;
        if let Some(last) = self.last {
            self.intervals_ms
                .push(now.duration_since(last).as_secs_f64() * 1e3);
        }
        self.last = Some(now);
    }

    /// Frames drawn during the last (or current) generation.
    pub fn count(&self) -> usize {
        self.frames
    }

    /// The `q` quantile of the frame intervals in ms (NaN before two frames).
    pub fn percentile_ms(&self, q: f64) -> f64 {
        let mut v = self.intervals_ms.clone();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(f64::total_cmp);
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    }
}

/// Writes `image` as an 8-bit RGBA PNG.
pub fn save_png(path: &Path, image: &ColorImage) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
    // Never over a file that appeared while the window ran.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| fail(&e))?;
    let [w, h] = image.size;
    let mut encoder = png::Encoder::new(BufWriter::new(file), w as u32, h as u32);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| fail(&e))?;
    let bytes: Vec<u8> = image.pixels.iter().flat_map(|p| p.to_array()).collect();
    writer.write_image_data(&bytes).map_err(|e| fail(&e))?;
    writer.finish().map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn frames_count_only_while_running_and_the_percentile_is_of_intervals() {
        let mut c = FrameClock::default();
        let t0 = Instant::now();
        c.tick(t0);
        assert_eq!(c.count(), 0);
        c.start();
        for ms in [0u64, 10, 20, 30, 130] {
            c.tick(t0 + Duration::from_millis(ms));
        }
        c.stop();
        c.tick(t0 + Duration::from_millis(500));
        assert_eq!(c.count(), 5);
        // Intervals 10, 10, 10, 100: the 95th percentile is the slow one, the median 10.
        assert!((c.percentile_ms(0.95) - 100.0).abs() < 1e-6);
        assert!((c.percentile_ms(0.5) - 10.0).abs() < 1e-6);
    }
}
