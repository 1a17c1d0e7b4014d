//! `apiq2gguf eval --quick` on stories260K: every row of the matrix scored against the source,
//! the perplexities equal to what the `perplexity` loop gives for the same files, the KL
//! divergences ordered as bits and adapters say they must be, the plot written, a second run
//! reusing every row, and a row whose score was lost scored again without a new calibration.

use crate::common::{bin, final_ppl, run_ok, shared, tempdir, tiny_heldout, tiny_text};

/// The cells of the Markdown row whose first cell is `name`.
fn cells(md: &str, name: &str) -> Vec<String> {
    let line = md
        .lines()
        .find(|l| l.split('|').nth(1).map(str::trim) == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in\n{md}"));
    line.split('|')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect()
}

fn num(c: &str) -> f64 {
    c.trim_end_matches(" %")
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {c}"))
}

#[test]
fn eval_quick_scores_every_row_and_reuses_finished_ones() {
    let dir = tempdir();
    let held = tiny_heldout(dir.path());
    let src = shared().join("models/stories260K/stories260K.gguf");
    let out = dir.path().join("eval");
    let args = |b: &mut std::process::Command| {
        b.arg("eval")
            .arg(&src)
            .arg(&out)
            .arg("--text")
            .arg(&held)
            .args(["--bits", "2", "4", "--quick", "--calib"])
            .arg(tiny_text())
            .args(["--calib-max-bytes", "200000", "-c", "256", "--chunks", "10"]);
    };
    let mut first = bin();
    args(&mut first);
    let run1 = first.output().unwrap();
    assert!(
        run1.status.success(),
        "{}",
        String::from_utf8_lossy(&run1.stderr)
    );
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert_eq!(String::from_utf8_lossy(&run1.stdout), md);

    let rows = [
        "rtn-2bit",
        "lwc-2bit",
        "apiq-bw-2bit-r16-f16",
        "apiq-bw-2bit-r16-q8_0",
        "apiq-bw-2bit-r64-f16",
        "apiq-bw-2bit-r64-q8_0",
        "rtn-4bit",
        "lwc-4bit",
        "apiq-bw-4bit-r16-f16",
        "apiq-bw-4bit-r16-q8_0",
        "apiq-bw-4bit-r64-f16",
        "apiq-bw-4bit-r64-q8_0",
    ];
    assert_eq!(md.lines().count(), 3 + rows.len(), "{md}");
    // cells: name, method, bits, adapter, MiB, PPL, KL, top-1
    let ppl_of = |model: &std::path::Path, lora: Option<&std::path::Path>| {
        let mut a: Vec<&std::ffi::OsStr> = vec!["perplexity".as_ref(), model.as_os_str()];
        a.extend(["-f".as_ref(), held.as_os_str()]);
        a.extend(["-c", "256", "--chunks", "10"].map(std::ffi::OsStr::new));
        if let Some(l) = lora {
            a.extend(["--lora".as_ref(), l.as_os_str()]);
        }
        final_ppl(&run_ok(&a))
    };
    let source = cells(&md, "source stories260K.gguf");
    assert!((num(&source[5]) - ppl_of(&src, None)).abs() < 1e-3, "{md}");
    let r64 = out.join("rows/apiq-bw-4bit-r64-f16");
    let with_lora = ppl_of(
        &r64.with_extension("gguf"),
        Some(&r64.with_extension("lora.gguf")),
    );
    assert!(
        (num(&cells(&md, "apiq-bw-4bit-r64-f16")[5]) - with_lora).abs() < 1e-3,
        "{md}"
    );
    let kl = |name: &str| num(&cells(&md, name)[6]);
    for r in rows {
        let c = cells(&md, r);
        assert!(
            num(&c[4]) > 0.0 && num(&c[5]).is_finite() && kl(r) > 0.0,
            "{r}: {md}"
        );
        assert!((0.0..=100.0).contains(&num(&c[7])), "{r}: {md}");
    }
    for r4 in rows.iter().filter(|r| r.contains("4bit")) {
        for r2 in rows.iter().filter(|r| r.contains("2bit")) {
            assert!(kl(r4) < kl(r2), "{r4} vs {r2}: {md}");
        }
    }
    for bits in ["2bit", "4bit"] {
        for r in rows.iter().filter(|r| r.contains(bits) && r.contains("-r")) {
            assert!(kl(r) < kl(&format!("rtn-{bits}")), "{r}: {md}");
        }
    }

    // The plot: a 1200 × 800 PNG, nothing half-written left beside it.
    let png = std::fs::read(out.join("plot-held.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    let dim = |o: usize| u32::from_be_bytes(png[o..o + 4].try_into().unwrap());
    assert_eq!((dim(16), dim(20)), (1200, 800));
    let names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("partial")), "{names:?}");

    let mut second = bin();
    args(&mut second);
    let run2 = second.output().unwrap();
    assert!(run2.status.success());
    let err = String::from_utf8_lossy(&run2.stderr);
    assert_eq!(err.matches(": reused").count(), rows.len(), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("results.md")).unwrap(), md);

    // A row whose result is gone but whose calibration finished: scored, not calibrated again.
    std::fs::remove_file(out.join("rows/apiq-bw-2bit-r16-q8_0.json")).unwrap();
    let mut third = bin();
    args(&mut third);
    let run3 = third.output().unwrap();
    assert!(run3.status.success());
    let err = String::from_utf8_lossy(&run3.stderr);
    assert_eq!(err.matches(": reused").count(), rows.len() - 1, "{err}");
    assert!(!err.contains("calibrating"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("results.md")).unwrap(), md);
}
