//! `apiq2gguf eval`: quality per byte. Calibrates a matrix of rows from one source model (this
//! binary run as a child per row, so each row is exactly what the CLI makes and resumes as the
//! CLI does), scores every row against the source on each text (perplexity, KL divergence,
//! top-1 agreement; [`crate::runtime::compare`]) and writes a Markdown table and, per text, a
//! plot of perplexity against size ([`crate::eval_plot`]). Finished rows are kept as
//! `DIR/rows/NAME.json` and reused when their recipe is unchanged; a finished calibration is
//! recorded beside its model, so a row interrupted while scored is not calibrated again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::eval_plot::{Family, Point};
use crate::pack::Format;
use crate::runtime::compare::{self, CompareArgs, Comparison};
use crate::runtime::Runtime;

/// One row: how the quantized model is made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowSpec {
    pub name: String,
    /// `apiq-bw`, `apiq-lw` or `rtn`.
    pub method: String,
    pub bits: u32,
    /// LoRA rank; `None`: no adapter (LWC only, or RTN).
    pub rank: Option<usize>,
    /// Adapter storage (`f16`, `q8_0`).
    pub lora_type: String,
    /// The calibration flags every row shares.
    pub recipe: Vec<String>,
    /// A llama.cpp type made by stock `llama-quantize` instead of our calibration.
    #[serde(default)]
    pub stock: Option<Stock>,
    /// Our `--format` (a K or IQ one) where not the default for the bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// A row of llama.cpp's own: `llama-quantize SOURCE OUT TYPE`, with an importance matrix from
/// the same calibration text or without.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stock {
    /// llama-quantize's type name (`Q2_K`, `IQ2_XS`, …).
    pub ftype: String,
    pub imatrix: bool,
}

/// Types llama-quantize refuses to make without an importance matrix.
fn needs_imatrix(ftype: &str) -> bool {
    matches!(
        ftype.to_ascii_uppercase().as_str(),
        "IQ1_S" | "IQ1_M" | "IQ2_XXS" | "IQ2_XS" | "IQ2_S" | "IQ2_M" | "Q2_K_S"
    )
}

/// The stock types compared by default: llama-quantize's named mixtures from 2 to 4.5 bits.
pub const STOCK_TYPES: [&str; 12] = [
    "Q2_0", "Q2_K", "Q2_K_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "Q3_K_S", "Q3_K_M",
    "Q4_0", "Q4_K_M",
];

impl RowSpec {
    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--method".to_string(),
            self.method.clone(),
            "--bits".into(),
            self.bits.to_string(),
        ];
        match self.rank {
            Some(r) => a.extend([
                "--lora-rank".into(),
                r.to_string(),
                "--lora-type".into(),
                self.lora_type.clone(),
            ]),
            None if self.method != "rtn" => a.push("--no-lora".into()),
            None => {}
        }
        if let Some(f) = &self.format {
            a.extend(["--format".into(), f.clone()]);
        }
        a.extend(self.recipe.iter().cloned());
        a
    }

    fn adapter_label(&self) -> String {
        if self.stock.is_some() {
            return "–".into();
        }
        match self.rank {
            Some(r) => format!("r{r} {}", self.lora_type),
            None => "–".into(),
        }
    }
}

/// The matrix: RTN, LWC only and ApiQ-bw with LoRA ranks 16 and 64 stored as F16 or Q8_0, at
/// each of `bits`; ApiQ-bw with Q8_0 LoRA ranks 16 and 32 in each of `formats` (our K and IQ
/// formats, at their own bits: the rows that compare like with like with llama-quantize's);
/// then each of `stock` types by llama-quantize, without an importance matrix (where
/// llama-quantize allows it) and with one.
pub fn matrix(
    bits: &[u32],
    formats: &[Format],
    recipe: &[String],
    stock: &[String],
) -> Vec<RowSpec> {
    let mut rows = Vec::new();
    for &b in bits {
        let row = |name: String, method: &str, rank: Option<usize>, lora_type: &str| RowSpec {
            name,
            method: method.into(),
            bits: b,
            rank,
            lora_type: lora_type.into(),
            recipe: recipe.to_vec(),
            stock: None,
            format: None,
        };
        rows.push(row(format!("rtn-{b}bit"), "rtn", None, "f16"));
        rows.push(row(format!("lwc-{b}bit"), "apiq-bw", None, "f16"));
        for r in [16, 64] {
            for t in ["f16", "q8_0"] {
                rows.push(row(
                    format!("apiq-bw-{b}bit-r{r}-{t}"),
                    "apiq-bw",
                    Some(r),
                    t,
                ));
            }
        }
    }
    for f in formats {
        for r in [16, 32] {
            rows.push(RowSpec {
                name: format!("apiq-{}-r{r}-q8_0", f.name()),
                method: "apiq-bw".into(),
                bits: f.kgrid().map_or(2, |k| k.bits()),
                rank: Some(r),
                lora_type: "q8_0".into(),
                recipe: recipe.to_vec(),
                stock: None,
                format: Some(f.name().into()),
            });
        }
    }
    for t in stock {
        for imatrix in [false, true] {
            if !imatrix && needs_imatrix(t) {
                continue;
            }
            let suffix = if imatrix { "-imatrix" } else { "" };
            rows.push(RowSpec {
                name: format!("llama-{}{suffix}", t.to_ascii_lowercase()),
                method: if imatrix {
                    "llama-quantize + imatrix".into()
                } else {
                    "llama-quantize".into()
                },
                bits: 0,
                rank: None,
                lora_type: String::new(),
                recipe: recipe.to_vec(),
                stock: Some(Stock {
                    ftype: t.to_ascii_uppercase(),
                    imatrix,
                }),
                format: None,
            });
        }
    }
    rows
}

/// What a finished row measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowResult {
    pub spec: RowSpec,
    pub model_bytes: u64,
    pub adapter_bytes: u64,
    /// One per text, in the order given.
    pub scores: Vec<Comparison>,
}

impl RowResult {
    /// The row on text `t`, as the plot draws it.
    fn point(&self, t: usize) -> Option<Point> {
        let family = match (&self.spec.stock, self.spec.method.as_str(), self.spec.rank) {
            (Some(s), _, _) if s.imatrix => Family::StockImatrix,
            (Some(_), _, _) => Family::Stock,
            (None, "rtn", _) => Family::Rtn,
            (None, _, None) => Family::LwcOnly,
            (None, _, Some(_)) => Family::ApiqLora,
        };
        Some(Point {
            name: self.spec.name.clone(),
            family,
            bytes: self.model_bytes + self.adapter_bytes,
            ppl: self.scores.get(t)?.ppl,
        })
    }
}

/// Stock llama.cpp's tools for the rows of its own types, and the calibration text their
/// importance matrix is computed on.
pub struct StockTools {
    /// Folder with `llama-quantize` and `llama-imatrix`.
    pub bin: PathBuf,
    pub calib_files: Vec<PathBuf>,
    pub calib_max_bytes: Option<usize>,
}

pub struct EvalArgs {
    pub stock: Option<StockTools>,
    pub source: PathBuf,
    pub dir: PathBuf,
    pub texts: Vec<PathBuf>,
    pub rows: Vec<RowSpec>,
    pub n_ctx: usize,
    pub n_chunks: Option<usize>,
    pub threads: i32,
}

fn row_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let rows = dir.join("rows");
    (
        rows.join(format!("{name}.gguf")),
        rows.join(format!("{name}.lora.gguf")),
        rows.join(format!("{name}.json")),
    )
}

fn cached(path: &Path, spec: &RowSpec, texts: usize) -> Option<RowResult> {
    let r: RowResult = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    (r.spec == *spec && r.scores.len() == texts).then_some(r)
}

/// Written (the row's spec) once the row's calibration has finished.
fn calibrated_marker(model: &Path) -> PathBuf {
    model.with_extension("calibrated.json")
}

fn is_calibrated(model: &Path, spec: &RowSpec) -> bool {
    let marker = std::fs::read(calibrated_marker(model)).ok();
    let done: Option<RowSpec> = marker.and_then(|m| serde_json::from_slice(&m).ok());
    done.as_ref() == Some(spec) && model.is_file()
}

/// Runs `cmd` with its output in `log` (.log, .err); fails with the last line it printed.
fn run_logged(mut cmd: Command, log: &Path, what: &str) -> Result<()> {
    let err_path = log.with_extension("err");
    let status = cmd
        .stdout(std::fs::File::create(log)?)
        .stderr(std::fs::File::create(&err_path)?)
        .status()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        let last = err.lines().rev().find(|l| !l.trim().is_empty());
        bail!("{what} failed: {}", last.unwrap_or("(no message)"));
    }
    Ok(())
}

fn calibrate(exe: &Path, source: &Path, out: &Path, spec: &RowSpec) -> Result<()> {
    let mut cmd = Command::new(exe);
    cmd.arg("--quiet").arg(source).arg(out).args(spec.args());
    run_logged(
        cmd,
        &out.with_extension("log"),
        &format!("row {}: calibration", spec.name),
    )?;
    write_atomic(&calibrated_marker(out), &serde_json::to_vec_pretty(spec)?)
}

/// The importance matrix of `source` on the calibration text (computed once per folder).
fn imatrix(
    t: &StockTools,
    source: &Path,
    dir: &Path,
    n_ctx: usize,
    threads: i32,
    gpu_layers: u32,
) -> Result<PathBuf> {
    let out = dir.join("rows/imatrix.gguf");
    if out.is_file() {
        return Ok(out);
    }
    let files = crate::calib::data::resolve_files(&t.calib_files)?;
    let text_path = dir.join("rows/calib.txt");
    write_atomic(
        &text_path,
        crate::calib::data::read_text(&files, t.calib_max_bytes)?.as_bytes(),
    )?;
    let partial = dir.join("rows/imatrix.partial.gguf");
    let mut cmd = Command::new(t.bin.join("llama-imatrix"));
    cmd.arg("-m")
        .arg(source)
        .arg("-f")
        .arg(&text_path)
        .arg("-o")
        .arg(&partial)
        .args(["-c", &n_ctx.to_string(), "--chunks", "128"])
        .args(["-t", &threads.to_string()])
        .args(["-ngl", &gpu_layers.to_string()]);
    run_logged(cmd, &dir.join("rows/imatrix.log"), "llama-imatrix")?;
    std::fs::rename(&partial, &out)?;
    Ok(out)
}

fn quantize(
    t: &StockTools,
    stock: &Stock,
    source: &Path,
    out: &Path,
    imatrix: Option<&Path>,
) -> Result<()> {
    let mut cmd = Command::new(t.bin.join("llama-quantize"));
    cmd.arg("--allow-requantize");
    if let Some(m) = imatrix {
        cmd.arg("--imatrix").arg(m);
    }
    cmd.arg(source).arg(out).arg(&stock.ftype);
    run_logged(
        cmd,
        &out.with_extension("log"),
        &format!("llama-quantize {}", stock.ftype),
    )
}

/// Runs (or reuses) every row, then writes `DIR/results.md`; returns the rows in order.
pub fn run(rt: &Runtime, a: &EvalArgs) -> Result<Vec<RowResult>> {
    if a.texts.is_empty() {
        bail!("give at least one evaluation text (--text)");
    }
    std::fs::create_dir_all(a.dir.join("rows"))
        .with_context(|| format!("{}: cannot create", a.dir.display()))?;
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut results = Vec::with_capacity(a.rows.len());
    for (i, spec) in a.rows.iter().enumerate() {
        let (model, lora, json) = row_paths(&a.dir, &spec.name);
        let head = format!("[{:>2}/{}] {}", i + 1, a.rows.len(), spec.name);
        if let Some(r) = cached(&json, spec, a.texts.len()) {
            eprintln!("{head}: reused");
            results.push(r);
            continue;
        }
        match (&spec.stock, &a.stock) {
            (None, _) if is_calibrated(&model, spec) => {}
            (None, _) => {
                eprintln!("{head}: calibrating");
                let start = Instant::now();
                calibrate(&exe, &a.source, &model, spec)?;
                eprintln!(
                    "{head}: calibrated in {:.0} s",
                    start.elapsed().as_secs_f64()
                );
            }
            (Some(stock), Some(tools)) => {
                eprintln!("{head}: llama-quantize {}", stock.ftype);
                let m = if stock.imatrix {
                    Some(imatrix(
                        tools,
                        &a.source,
                        &a.dir,
                        a.n_ctx,
                        a.threads,
                        rt.gpu_layers(),
                    )?)
                } else {
                    None
                };
                quantize(tools, stock, &a.source, &model, m.as_deref())?;
            }
            (Some(_), None) => bail!("row {}: stock rows need llama.cpp's tools", spec.name),
        }
        let lora = lora.is_file().then_some(lora);
        let mut scores = Vec::with_capacity(a.texts.len());
        for text in &a.texts {
            let args = CompareArgs {
                reference: a.source.clone(),
                model: model.clone(),
                lora: lora.clone(),
                text: text.clone(),
                n_ctx: a.n_ctx,
                n_chunks: a.n_chunks,
                threads: a.threads,
            };
            let c = compare::run(rt, &args)?;
            eprintln!(
                "{head}: {} PPL {:.4} (source {:.4}), KL {:.5}, top-1 {:.2} %",
                text.file_name().unwrap_or_default().to_string_lossy(),
                c.ppl,
                c.ppl_reference,
                c.kl,
                100.0 * c.top1
            );
            scores.push(c);
        }
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let r = RowResult {
            spec: spec.clone(),
            model_bytes: size(&model),
            adapter_bytes: lora.as_deref().map_or(0, size),
            scores,
        };
        write_atomic(&json, &serde_json::to_vec_pretty(&r)?)?;
        results.push(r);
    }
    let source_bytes = std::fs::metadata(&a.source)?.len();
    let md = table(&a.source, source_bytes, &a.texts, &results);
    write_atomic(&a.dir.join("results.md"), md.as_bytes())?;
    for (t, text) in a.texts.iter().enumerate() {
        let stem = text.file_stem().unwrap_or_default().to_string_lossy();
        let title = format!(
            "{} on {}: perplexity against size",
            a.source.file_name().unwrap_or_default().to_string_lossy(),
            text.file_name().unwrap_or_default().to_string_lossy()
        );
        let src_ppl = results
            .first()
            .map_or(f64::NAN, |r| r.scores[t].ppl_reference);
        // Drawn beside, then renamed: no half-written picture under the final name.
        let partial = a.dir.join(format!(".plot-{stem}.partial.png"));
        let points: Vec<Point> = results.iter().filter_map(|r| r.point(t)).collect();
        crate::eval_plot::draw(&partial, &title, (src_ppl, source_bytes), &points)?;
        std::fs::rename(&partial, a.dir.join(format!("plot-{stem}.png")))?;
    }
    Ok(results)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = crate::atomic::AtomicFile::create(path)?;
    f.write_all(bytes)?;
    f.commit()
}

fn mib(b: u64) -> String {
    format!("{:.2}", b as f64 / (1u64 << 20) as f64)
}

/// The Markdown table: one line per row, size with the adapter, then per text PPL, KL, top-1.
pub fn table(source: &Path, source_bytes: u64, texts: &[PathBuf], rows: &[RowResult]) -> String {
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string()
    };
    let mut s = String::from("| row | method | bits / type | adapter | MiB (model + adapter) |");
    let mut rule = String::from("|---|---|---:|---|---:|");
    for t in texts {
        let t = name(t);
        s += &format!(" PPL {t} | KL {t} | top-1 {t} |");
        rule += "---:|---:|---:|";
    }
    s += "\n";
    s += &rule;
    s += "\n";
    s += &format!(
        "| source {} | – | – | – | {} |",
        name(source),
        mib(source_bytes)
    );
    for c in rows
        .first()
        .map(|r| r.scores.as_slice())
        .unwrap_or_default()
    {
        s += &format!(" {:.4} | 0 | 100 % |", c.ppl_reference);
    }
    s += "\n";
    for r in rows {
        let bits = match (&r.spec.stock, &r.spec.format) {
            (Some(st), _) => st.ftype.clone(),
            (None, Some(f)) => f.to_ascii_uppercase(),
            (None, None) => r.spec.bits.to_string(),
        };
        s += &format!(
            "| {} | {} | {} | {} | {} |",
            r.spec.name,
            r.spec.method,
            bits,
            r.spec.adapter_label(),
            mib(r.model_bytes + r.adapter_bytes)
        );
        for c in &r.scores {
            s += &format!(" {:.4} | {:.5} | {:.2} % |", c.ppl, c.kl, 100.0 * c.top1);
        }
        s += "\n";
    }
    s
}
