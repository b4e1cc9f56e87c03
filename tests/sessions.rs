//! Sessions: save, resume and fork continue exactly like an uninterrupted run; batched
//! decoding gives each sequence the text it gets alone; the same seed gives the same text.

use std::path::Path;
use std::sync::Arc;

use moxe::ops::sample::Sampling;
use moxe::runtime::generate::{generate_batch, GenerateOptions};
use moxe::runtime::{LoadOptions, Model, Session};
use moxe::testing::gpu;

fn default_model(sequences: usize) -> Arc<Model> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    let options = LoadOptions {
        max_sequences: sequences,
        ..Default::default()
    };
    Arc::new(Model::load(gpu(), &dir, &options).unwrap())
}

/// Feeds `first` then each sampled token `n` times; returns the tokens.
fn continue_from(s: &mut Session, first: u32, n: usize, sampling: &Sampling) -> Vec<u32> {
    let mut out = vec![first];
    let mut next = first;
    for _ in 1..n {
        next = s.feed(&[next], sampling).unwrap();
        out.push(next);
    }
    out
}

#[test]
fn save_resume_and_fork_continue_like_an_uninterrupted_run() {
    let model = default_model(4);
    let prompt = model
        .tokenizer()
        .unwrap()
        .encode("It was a dark and stormy night; the rain")
        .unwrap();
    let sampling = Sampling {
        temperature: 0.9,
        top_k: 50,
        top_p: 0.95,
        seed: 7,
    };

    let mut whole = Session::new(&model).unwrap();
    let first = whole.feed(&prompt, &sampling).unwrap();
    let want = continue_from(&mut whole, first, 24, &sampling);
    drop(whole);

    // Save after the prompt, drop the session, resume from the file.
    let path =
        std::env::temp_dir().join(format!("moxe-session-{}.safetensors", std::process::id()));
    {
        let mut s = Session::new(&model).unwrap();
        assert_eq!(s.feed(&prompt, &sampling).unwrap(), first);
        s.save(&path).unwrap();
    }
    let mut resumed = Session::load(&model, &path).unwrap();
    assert_eq!(resumed.position(), prompt.len());
    assert_eq!(
        continue_from(&mut resumed, first, 24, &sampling),
        want,
        "resumed"
    );
    drop(resumed);
    std::fs::remove_file(&path).unwrap();

    // Fork after the prompt: both branches continue identically.
    let mut a = Session::new(&model).unwrap();
    assert_eq!(a.feed(&prompt, &sampling).unwrap(), first);
    let mut b = a.fork().unwrap();
    assert_eq!(continue_from(&mut b, first, 24, &sampling), want, "fork");
    assert_eq!(
        continue_from(&mut a, first, 24, &sampling),
        want,
        "original after fork"
    );
}

#[test]
fn a_generation_absorbed_into_the_state_continues_its_text() {
    let model = default_model(2);
    let opts = GenerateOptions {
        max_tokens: 12,
        ..Default::default()
    };
    let prompt = model.tokenizer().unwrap().encode("The king said").unwrap();
    let mut s = Session::new(&model).unwrap();
    let mut gen = s.generate_ids(&prompt, &opts).unwrap();
    let generated: Vec<u32> = gen.by_ref().map(|p| p.unwrap().id).collect();
    gen.absorb_last().unwrap();
    assert_eq!(generated.len(), 12);
    assert_eq!(
        s.position(),
        prompt.len() + 12,
        "prompt and all generated tokens consumed"
    );
    // The same state reached by feeding prompt + generated ids in one go.
    let mut t = Session::new(&model).unwrap();
    t.logits(&[prompt.clone(), generated].concat()).unwrap();
    let a = s.logits(&[5]).unwrap();
    let b = t.logits(&[5]).unwrap();
    moxe::testing::assert_close(&a, &b, 1e-4, 1e-4, "continuation after absorb_last");
}

#[test]
fn an_empty_prompt_goes_on_where_the_last_generation_stopped() {
    let model = default_model(3);
    let sampling = Sampling {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        seed: 11,
    };
    let opts = |max_tokens| GenerateOptions {
        max_tokens,
        sampling,
        stop_at_eos: false,
        ..Default::default()
    };
    let pieces = |g: moxe::runtime::generate::Generation<'_>| -> Vec<(u32, String)> {
        g.map(|p| p.map(|p| (p.id, p.text)).unwrap()).collect()
    };
    let prompt = "The old man said";
    let mut whole = Session::new(&model).unwrap();
    let want = pieces(whole.generate(prompt, &opts(20)).unwrap());
    assert_eq!(want.len(), 20);
    drop(whole);

    // Ended at its budget: "" feeds the last token and goes on.
    let mut s = Session::new(&model).unwrap();
    let mut got = pieces(s.generate(prompt, &opts(8)).unwrap());
    got.extend(pieces(s.generate("", &opts(12)).unwrap()));
    assert_eq!(
        got, want,
        "a generation ended at its budget, then continued"
    );

    // Dropped early: "" hands out the token it had sampled, then goes on; a fork keeps
    // the resume point.
    let mut s = Session::new(&model).unwrap();
    let mut gen = s.generate(prompt, &opts(20)).unwrap();
    let mut got: Vec<(u32, String)> = gen
        .by_ref()
        .take(5)
        .map(|p| p.map(|p| (p.id, p.text)).unwrap())
        .collect();
    drop(gen);
    let mut fork = s.fork().unwrap();
    let rest = pieces(fork.generate_ids(&[], &opts(15)).unwrap());
    got.extend(pieces(s.generate("", &opts(15)).unwrap()));
    assert_eq!(got, want, "a generation dropped early, then continued");
    assert_eq!(rest, want[5..], "the fork went on as its parent");
    drop((s, fork));

    // After a feed, "" goes on from the token it sampled; max_tokens 0 reads the prompt.
    for max_tokens in [None, Some(0)] {
        let mut s = Session::new(&model).unwrap();
        match max_tokens {
            None => {
                let ids = model.tokenizer().unwrap().encode(prompt).unwrap();
                s.feed(&ids, &sampling).unwrap();
            }
            Some(n) => assert!(s.generate(prompt, &opts(n)).unwrap().next().is_none()),
        }
        let got = pieces(s.generate("", &opts(20)).unwrap());
        assert_eq!(got, want, "after {max_tokens:?}");
    }

    // A saved session keeps where it stopped, absorbed or not.
    let path = std::env::temp_dir().join(format!("moxe-resume-{}.safetensors", std::process::id()));
    for absorb in [false, true] {
        let mut s = Session::new(&model).unwrap();
        let mut gen = s.generate(prompt, &opts(8)).unwrap();
        gen.by_ref().for_each(drop);
        if absorb {
            gen.absorb_last().unwrap();
        } else {
            drop(gen);
        }
        s.save(&path).unwrap();
        drop(s);
        let mut s = Session::load(&model, &path).unwrap();
        let got = pieces(s.generate("", &opts(12)).unwrap());
        assert_eq!(got, want[8..], "resumed from a file, absorbed: {absorb}");
    }
    std::fs::remove_file(&path).unwrap();

    // New text after a generation that ended: its last token is read first, as after
    // absorbing it (greedy: absorbing draws one sample more).
    let more = |absorb: bool| {
        let greedy = GenerateOptions {
            max_tokens: 6,
            stop_at_eos: false,
            ..Default::default()
        };
        let mut s = Session::new(&model).unwrap();
        let mut gen = s.generate(prompt, &greedy).unwrap();
        gen.by_ref().for_each(drop);
        if absorb {
            gen.absorb_last().unwrap();
        } else {
            drop(gen);
        }
        let logits = s.feed_logits(&[5]).unwrap();
        (pieces(s.generate(" and then", &greedy).unwrap()), logits)
    };
    let ((kept, a), (absorbed, b)) = (more(false), more(true));
    assert_eq!(kept, absorbed);
    // feed_logits read the pending token first too (one chunk of two ids against two).
    moxe::testing::assert_close(&a, &b, 1e-4, 1e-4, "feed_logits after a pending token");

    // Logits or scores read without sampling leave nothing to go on from.
    let mut s = Session::new(&model).unwrap();
    s.logits(&[5, 6]).unwrap();
    let err = s.generate("", &opts(4)).err().unwrap().to_string();
    assert!(err.contains("nothing to generate from"), "{err}");
}

#[test]
fn the_state_has_the_same_size_whatever_the_length() {
    let model = default_model(2);
    let bytes = model.state_bytes_per_sequence();
    assert!(bytes > 0);
    let dir = std::env::temp_dir();
    let short = dir.join(format!("moxe-short-{}.safetensors", std::process::id()));
    let long = dir.join(format!("moxe-long-{}.safetensors", std::process::id()));
    let mut s = Session::new(&model).unwrap();
    s.feed(&[5, 6, 7], &Sampling::greedy()).unwrap();
    s.save(&short).unwrap();
    let ids: Vec<u32> = (0..300).map(|i| (i * 7 % 4000) as u32).collect();
    s.feed(&ids, &Sampling::greedy()).unwrap();
    s.save(&long).unwrap();
    // The state's bytes (the metadata's counters and context ids vary in length).
    let len = |p: &Path| -> usize {
        let bytes = std::fs::read(p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        st.tensors().iter().map(|(_, v)| v.data().len()).sum()
    };
    assert_eq!(len(&short), len(&long));
    std::fs::remove_file(short).unwrap();
    std::fs::remove_file(long).unwrap();
}

#[test]
fn a_session_file_from_another_model_is_rejected() {
    let model = default_model(1);
    let path = std::env::temp_dir().join(format!("moxe-other-{}.safetensors", std::process::id()));
    let other_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/moxe_xlstm_e4_k2_standard");
    let other = Arc::new(Model::load(gpu(), &other_dir, &LoadOptions::default()).unwrap());
    let mut s = Session::new(&other).unwrap();
    s.feed(&[1, 2, 3], &Sampling::greedy()).unwrap();
    s.save(&path).unwrap();
    let err = Session::load(&model, &path)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("different model"), "{err}");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn batched_decoding_matches_decoding_alone_and_seeds_reproduce() {
    let model = default_model(3);
    let prompts = ["Once upon a time", "The old man said", "CHAPTER I"];
    for sampling in [
        Sampling::greedy(),
        Sampling {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            seed: 1234,
        },
    ] {
        let opts = GenerateOptions {
            max_tokens: 20,
            sampling,
            ..Default::default()
        };
        let batch = generate_batch(&model, &prompts, &opts, |_, _| {}).unwrap();
        for (p, got) in prompts.iter().zip(&batch) {
            let mut s = Session::new(&model).unwrap();
            let alone: String = s
                .generate(p, &opts)
                .unwrap()
                .map(|piece| piece.unwrap().text)
                .collect();
            assert_eq!(got.text, alone, "{p:?} with {sampling:?}");
        }
        // The same seed again gives the same text.
        let again = generate_batch(&model, &prompts, &opts, |_, _| {}).unwrap();
        for (a, b) in batch.iter().zip(&again) {
            assert_eq!(a.text, b.text);
        }
    }
}

#[test]
fn stop_strings_and_token_budgets_end_generation() {
    let model = default_model(1);
    {
        let mut s = Session::new(&model).unwrap();
        let opts = GenerateOptions {
            max_tokens: 7,
            ..Default::default()
        };
        let mut gen = s.generate("The old man said", &opts).unwrap();
        let n = gen.by_ref().count();
        assert_eq!(n, 7);
        assert_eq!(
            gen.finish(),
            Some(moxe::runtime::generate::Finish::MaxTokens)
        );
    }

    // Greedy text of 40 tokens, streamed piece by piece, is the decoding of its ids;
    // stopping at a word inside it truncates just before it.
    let pieces: Vec<_> = Session::new(&model)
        .unwrap()
        .generate(
            "The old man said",
            &GenerateOptions {
                max_tokens: 40,
                ..Default::default()
            },
        )
        .unwrap()
        .map(|p| p.unwrap())
        .collect();
    let full: String = pieces.iter().map(|p| p.text.as_str()).collect();
    let ids: Vec<u32> = pieces.iter().map(|p| p.id).collect();
    assert_eq!(
        full,
        model.require_tokenizer().unwrap().decode(&ids).unwrap()
    );
    let word = full
        .split_whitespace()
        .nth(3)
        .expect("some words")
        .to_string();
    let cut = full.find(&word).unwrap();
    let mut s = Session::new(&model).unwrap();
    let opts = GenerateOptions {
        max_tokens: 40,
        stop: vec![word.clone()],
        ..Default::default()
    };
    let mut gen = s.generate("The old man said", &opts).unwrap();
    let stopped: String = gen.by_ref().map(|p| p.unwrap().text).collect();
    assert_eq!(stopped, full[..cut], "stop at {word:?}");
    assert_eq!(gen.finish(), Some(moxe::runtime::generate::Finish::Stop));
}

#[test]
fn the_model_is_shared_by_sessions_on_several_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Model>();
    let model = default_model(3);
    let ids = model
        .tokenizer()
        .unwrap()
        .encode("In the beginning")
        .unwrap();
    let want = Session::new(&model)
        .unwrap()
        .feed(&ids, &Sampling::greedy())
        .unwrap();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let model = model.clone();
            let ids = ids.clone();
            std::thread::spawn(move || {
                Session::new(&model)
                    .unwrap()
                    .feed(&ids, &Sampling::greedy())
                    .unwrap()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), want);
    }
}

#[test]
fn a_batched_prefill_leaves_each_session_where_its_own_prefill_does() {
    let model = default_model(6);
    // 37 ids each: chunks of 32, 4 and 1 (the default chunk is 128).
    let prompts: Vec<Vec<u32>> = (0..3u32)
        .map(|p| {
            (0..37u32)
                .map(|i| (i * 31 + p * 101 + 7) % 4000 + 20)
                .collect()
        })
        .collect();
    let mut solo_logits = Vec::new();
    let mut solo = Vec::new();
    for p in &prompts {
        let mut s = Session::new(&model).unwrap();
        solo_logits.extend(s.feed_logits(p).unwrap());
        solo.push(s);
    }
    let mut batched: Vec<Session> = (0..3).map(|_| Session::new(&model).unwrap()).collect();
    let ids: Vec<u32> = prompts.concat();
    let logits = {
        let mut refs: Vec<&mut Session> = batched.iter_mut().collect();
        model.feed_logits_batch(&mut refs, &ids).unwrap()
    };
    assert_eq!(logits, solo_logits, "logits after the prompts");
    // The states too: the same greedy continuation, token for token.
    let greedy = Sampling::greedy();
    for (a, b) in solo.iter_mut().zip(&mut batched) {
        assert_eq!(a.position(), b.position());
        let first = a.feed(&[5], &greedy).unwrap();
        assert_eq!(b.feed(&[5], &greedy).unwrap(), first);
        assert_eq!(
            continue_from(a, first, 8, &greedy),
            continue_from(b, first, 8, &greedy)
        );
    }
    // Uneven input is a typed error.
    let mut refs: Vec<&mut Session> = batched.iter_mut().collect();
    assert!(model.feed_logits_batch(&mut refs, &ids[..10]).is_err());
}

#[test]
fn a_session_file_with_an_array_the_model_lacks_is_rejected() {
    let model = default_model(1);
    let path = std::env::temp_dir().join(format!("moxe-extra-{}.safetensors", std::process::id()));
    let mut s = Session::new(&model).unwrap();
    s.feed(&[1, 2, 3], &Sampling::greedy()).unwrap();
    s.save(&path).unwrap();
    drop(s);
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let extra = vec![0u8; 16];
    let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    views.push((
        "state99".into(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &extra).unwrap(),
    ));
    let data = safetensors::serialize(views, meta.metadata().clone()).unwrap();
    std::fs::write(&path, data).unwrap();
    let err = Session::load(&model, &path)
        .err()
        .expect("must fail")
        .to_string();
    assert!(err.contains("'state99'"), "{err}");
    assert!(
        err.contains(&*path.to_string_lossy()),
        "names the file: {err}"
    );
    // Counters past what a session reaches are refused, not wrapped round at the next feed;
    // a resume point must hold ids of the vocabulary.
    for (key, value) in [
        ("position", u64::MAX.to_string()),
        ("draws", (1u64 << 32).to_string()),
        ("resume", "sampled 4096 1".to_string()),
        ("resume", "unfed".to_string()),
    ] {
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut meta = meta.metadata().clone().unwrap();
        meta.insert(key.into(), value.to_string());
        std::fs::write(
            &path,
            safetensors::serialize(st.tensors(), Some(meta)).unwrap(),
        )
        .unwrap();
        let err = Session::load(&model, &path)
            .err()
            .expect("must fail")
            .to_string();
        let quoted = if key == "resume" {
            format!("'{value}'")
        } else {
            value
        };
        assert!(
            err.contains(&format!("metadata '{key}' is {quoted}")),
            "{err}"
        );
    }
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut meta = meta.metadata().clone().unwrap();
    meta.remove("model");
    std::fs::write(
        &path,
        safetensors::serialize(st.tensors(), Some(meta)).unwrap(),
    )
    .unwrap();
    let err = Session::load(&model, &path).err().unwrap().to_string();
    assert!(err.contains("metadata 'model' is missing"), "{err}");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn a_watched_feed_reads_like_a_feed_and_stops_between_chunks() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    let options = LoadOptions {
        max_sequences: 3,
        prefill_chunk: 16,
        ..Default::default()
    };
    let model = Arc::new(Model::load(gpu(), &dir, &options).unwrap());
    // 40 ids: chunks of 16, 16 and 8.
    let ids: Vec<u32> = (0..40u32).map(|i| (i * 53 + 11) % 4000 + 20).collect();
    let sampling = Sampling {
        temperature: 0.9,
        top_k: 0,
        top_p: 1.0,
        seed: 7,
    };
    let mut plain = Session::new(&model).unwrap();
    let first = plain.feed(&ids, &sampling).unwrap();
    let expected = continue_from(&mut plain, first, 8, &sampling);

    // Asked before each chunk with what the device has read.
    let mut asked = Vec::new();
    let mut watched = Session::new(&model).unwrap();
    let got = watched
        .feed_watched(
            &ids,
            &sampling,
            Some(&mut |read, total| {
                asked.push((read, total));
                true
            }),
        )
        .unwrap();
    assert_eq!(asked, vec![(0, 40), (16, 40), (32, 40)]);
    assert_eq!(got, Some(first));
    assert_eq!(continue_from(&mut watched, first, 8, &sampling), expected);

    // Stopped before the last chunk: the session holds the whole chunks read, and feeding
    // the rest continues exactly (no random draw was spent on the stopped feed).
    let mut stopped = Session::new(&model).unwrap();
    let none = stopped
        .feed_watched(&ids, &sampling, Some(&mut |read, _| read < 32))
        .unwrap();
    assert_eq!(none, None);
    assert_eq!(stopped.position(), 32);
    assert_eq!(stopped.feed(&ids[32..], &sampling).unwrap(), first);
    assert_eq!(continue_from(&mut stopped, first, 8, &sampling), expected);
}

#[test]
fn the_command_line_saves_a_session_and_goes_on_from_it() {
    let dir = std::env::temp_dir().join(format!("moxe-cli-session-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (saved, prompt_file) = (dir.join("story.session"), dir.join("prompt.txt"));
    let moxe = |args: &[&str]| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
            .args(["generate", "--temperature", "0", "--ignore-eos"])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let prompt = "The old man said";
    let whole = moxe(&["-p", prompt, "--max-tokens", "12"]);
    let s = saved.to_str().unwrap();
    let first = moxe(&["-p", prompt, "--max-tokens", "5", "--save-session", s]);
    let rest = moxe(&["--resume", s, "-p", "", "--max-tokens", "7"]);
    // Each run ends its text with one line break.
    assert_eq!(format!("{}{rest}", &first[..first.len() - 1]), whole);
    // A prompt read from a file loses the line break an editor ends it with.
    std::fs::write(&prompt_file, format!("{prompt}\n")).unwrap();
    let from_file = moxe(&[
        "--prompt-file",
        prompt_file.to_str().unwrap(),
        "--max-tokens",
        "12",
    ]);
    assert_eq!(from_file, whole);
    // A reader that goes away stops the generation, and the session is still saved.
    std::fs::remove_file(&saved).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
        .args([
            "generate",
            "-p",
            prompt,
            "--ignore-eos",
            "--max-tokens",
            "1000000",
        ])
        .args(["--save-session", s])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 8];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(err.contains("standard output was closed"), "{err}");
    assert!(saved.is_file(), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_session_resumed_with_other_weights_of_the_same_configuration_says_so() {
    let dir = std::env::temp_dir().join(format!("moxe-other-weights-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    let q8 = dir.join("q8");
    moxe::convert::quantize::quantize(&bundled, &q8, moxe::quant::QuantFormat::Q8, false, None)
        .unwrap();
    let saved = dir.join("s.session");
    let moxe = |model: &Path, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_moxe"))
            .args([
                "generate",
                "--model",
                model.to_str().unwrap(),
                "--max-tokens",
                "2",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let s = saved.to_str().unwrap();
    moxe(&bundled, &["-p", "Once", "--save-session", s]);
    let same = moxe(&bundled, &["--resume", s, "-p", " upon"]);
    assert!(!same.contains("other weights"), "{same}");
    let other = moxe(&q8, &["--resume", s, "-p", " upon"]);
    assert!(other.contains("saved with other weights"), "{other}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn text_held_back_for_a_stop_string_goes_on_with_the_generation() {
    let model = default_model(2);
    let greedy = |stop: Vec<String>, max_tokens| GenerateOptions {
        max_tokens,
        stop,
        stop_at_eos: false,
        ..Default::default()
    };
    let prompt = "The old man said";
    let texts = |g: moxe::runtime::generate::Generation<'_>| -> Vec<String> {
        g.map(|p| p.unwrap().text).collect()
    };
    let plain = texts(
        Session::new(&model)
            .unwrap()
            .generate(prompt, &greedy(vec![], 20))
            .unwrap(),
    );
    // A stop string that begins with piece k's text but never occurs: after piece k the
    // text is held back, then released with the next piece.
    let k = (5..20)
        .find(|&k| !plain[k].is_empty())
        .expect("a piece with text");
    let stop = vec![format!("{}\u{1}never", plain[k])];
    let whole: String = texts(
        Session::new(&model)
            .unwrap()
            .generate(prompt, &greedy(stop.clone(), 20))
            .unwrap(),
    )
    .concat();
    assert_eq!(whole, plain.concat());
    let path = std::env::temp_dir().join(format!("moxe-held-{}.safetensors", std::process::id()));
    for through_file in [false, true] {
        let mut s = Session::new(&model).unwrap();
        let mut gen = s.generate(prompt, &greedy(stop.clone(), 20)).unwrap();
        let first: Vec<String> = gen.by_ref().take(k + 1).map(|p| p.unwrap().text).collect();
        drop(gen);
        if through_file {
            s.save(&path).unwrap();
            drop(s);
            s = Session::load(&model, &path).unwrap();
        }
        let rest = texts(s.generate("", &greedy(stop.clone(), 19 - k)).unwrap());
        assert_eq!(
            first.concat() + &rest.concat(),
            whole,
            "held text through a file: {through_file}"
        );
    }
    std::fs::remove_file(&path).unwrap();
}
