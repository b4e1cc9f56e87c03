//! The headless check as a new user would run it: the app under Xvfb (lavapipe renders the
//! window and runs the engine on the same device) generates at once, saves a screenshot
//! after the last token and reports its frames. Needs `xvfb-run` (`.ci/setup` installs it).

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// `xvfb-run -a` picks a free display number racily: one X server at a time.
static XVFB: Mutex<()> = Mutex::new(());

fn xvfb_run() -> &'static str {
    let found = Command::new("sh")
        .args(["-c", "command -v xvfb-run"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "xvfb-run is missing: run .ci/setup (it installs xvfb)"
    );
    "xvfb-run"
}

/// Decodes the PNG: (width, height, distinct RGBA colours).
fn picture(path: &Path) -> (u32, u32, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bytes = &buf[..info.buffer_size()];
    let mut colours: Vec<&[u8]> = bytes.chunks(4).collect();
    colours.sort_unstable();
    colours.dedup();
    (info.width, info.height, colours.len())
}

fn number(report: &str, label: &str) -> f64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in the report:\n{report}"))
}

#[test]
fn the_window_keeps_drawing_while_the_model_generates_and_screenshots_the_result() {
    let _x = XVFB.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("moxe-chat-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("chat.png");
    let _ = std::fs::remove_file(&shot);
    let out = Command::new(xvfb_run())
        .args(["-a", "-s", "-screen 0 1280x800x24"])
        .arg(env!("CARGO_BIN_EXE_moxe-chat"))
        .args([
            "--prompt",
            "Once upon a time",
            "--max-tokens",
            "32",
            "--screenshot",
        ])
        .arg(&shot)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("XDG_RUNTIME_DIR"),
        "windowing noise:\n{stderr}"
    );
    let frames = number(&stdout, "frames drawn during generation: ");
    let p95 = number(&stdout, "95th-percentile frame time: ");
    assert!(frames >= 5.0, "frames stopped during generation:\n{stdout}");
    assert!(p95.is_finite() && p95 > 0.0, "{stdout}");
    assert!(stdout.contains("max tokens: 32 tokens"), "{stdout}");
    // The decode rate counts the 32 steps after the prompt, not its reading.
    assert!(number(&stdout, "decode: ") > 0.0, "{stdout}");
    assert!(stdout.contains("tokens/s (32 steps)"), "{stdout}");
    let (w, h, colours) = picture(&shot);
    assert!(w >= 800 && h >= 500, "a {w}x{h} screenshot");
    // Text, panels and the router grid: many colours, not a blank or single-colour frame.
    assert!(colours > 50, "only {colours} colours in the screenshot");
    // Nothing is overwritten: the same screenshot path again is refused.
    let again = Command::new(env!("CARGO_BIN_EXE_moxe-chat"))
        .args(["--prompt", "x", "--screenshot"])
        .arg(&shot)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_engine_error_is_reported_not_a_crash() {
    let _x = XVFB.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("moxe-chat-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), "{\"model_type\": \"moxe\"").unwrap();
    let shot = dir.join("never.png");
    let out = Command::new(xvfb_run())
        .args(["-a", "-s", "-screen 0 1024x700x24"])
        .arg(env!("CARGO_BIN_EXE_moxe-chat"))
        .arg("--model")
        .arg(&dir)
        .args(["--prompt", "x", "--max-tokens", "4", "--screenshot"])
        .arg(&shot)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("config.json"),
        "the error names the file: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!shot.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_engine_s_backend_and_adapter_choices_are_honoured_or_refused() {
    let dir = std::env::temp_dir().join(format!("moxe-chat-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("shot.png");
    // Refused before any window: a backend that does not exist, a screenshot directory that
    // does not exist.
    let bogus = Command::new(env!("CARGO_BIN_EXE_moxe-chat"))
        .env("MOXE_BACKEND", "bogus")
        .args(["--prompt", "hi", "--screenshot", shot.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bogus.stderr);
    assert!(
        !bogus.status.success() && err.contains("MOXE_BACKEND"),
        "{err}"
    );
    let nowhere = dir.join("missing").join("shot.png");
    let out = Command::new(env!("CARGO_BIN_EXE_moxe-chat"))
        .args(["--prompt", "hi", "--screenshot", nowhere.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not exist"),
        "{err}"
    );
    // An adapter that matches nothing is named with the ones there are.
    let _x = XVFB.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(xvfb_run())
        .args(["-a", "-s", "-screen 0 1280x800x24"])
        .arg(env!("CARGO_BIN_EXE_moxe-chat"))
        .env("MOXE_ADAPTER", "no-such-adapter")
        .args(["--prompt", "hi", "--screenshot", shot.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("MOXE_ADAPTER") && err.contains("no-such-adapter"),
        "{err}"
    );
    assert!(!shot.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
